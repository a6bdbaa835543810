"""Generators: deterministic per-image seeds, resumable, manifest complete, masks validated."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from conftest import box_masks  # noqa: E402

from edge_persrep.runtime import EdgePersrepError, ImageError, list_images  # noqa: E402
from edge_persrep.server_side import synth  # noqa: E402


def _request(examples, out, **kw):
    return synth.SynthRequest(photos=list_images([examples / "dog"]), category="dog", out_dir=out, count=6, **kw)


def test_augment_is_deterministic_and_resumes(examples, tmp_path):
    first = synth.generate("augment", _request(examples, tmp_path / "a"))
    second = synth.generate("augment", _request(examples, tmp_path / "b"))
    assert [p.read_bytes() for p in first.positives] == [p.read_bytes() for p in second.positives]
    victim = first.positives[3]
    kept_time = first.positives[0].stat().st_mtime_ns
    victim.unlink()
    again = synth.generate("augment", _request(examples, tmp_path / "a"))
    assert victim.read_bytes() == second.positives[3].read_bytes()  # regenerated identically
    assert first.positives[0].stat().st_mtime_ns == kept_time  # finished images were skipped
    manifest = json.loads(again.manifest.read_text())
    assert [e["file"] for e in manifest["images"]] == [f"positives/{i:05d}.jpg" for i in range(6)]


def test_rerun_with_other_settings_is_refused(examples, tmp_path):
    synth.generate("augment", _request(examples, tmp_path))
    with pytest.raises(EdgePersrepError, match="other settings"):
        synth.generate("augment", _request(examples, tmp_path, seed=5))


def _masks(examples, tmp_path):
    return box_masks(examples / "dog", tmp_path / "masks")


def test_cutpaste_pastes_the_masked_object(examples, tmp_path):
    photos = list_images([examples / "dog"])
    masks = synth.match_masks(photos, _masks(examples, tmp_path))
    result = synth.generate("cutpaste", _request(examples, tmp_path / "cp", masks=masks))
    manifest = json.loads(result.manifest.read_text())
    for entry, path in zip(manifest["images"], result.positives):
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256 and 0.3 <= entry["scale"] <= 1.3
        assert Image.open(path).size == (256, 256)


def test_bad_masks_are_refused(examples, tmp_path):
    photos = list_images([examples / "dog"])
    mask_dir = _masks(examples, tmp_path)
    with pytest.raises(ImageError, match="no mask for photo"):
        synth.match_masks(photos, tmp_path)
    masks = synth.match_masks(photos, mask_dir)
    Image.new("L", (10, 10), 255).save(masks[0])
    with pytest.raises(ImageError, match="masks must match their photos"):
        synth.generate("cutpaste", _request(examples, tmp_path / "x", masks=masks))
    w, h = Image.open(photos[0]).size
    Image.new("L", (w, h), 0).save(masks[0])
    with pytest.raises(ImageError, match="empty"):
        synth.generate("cutpaste", _request(examples, tmp_path / "y", masks=masks))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w), np.uint8)).save(masks[0])
    with pytest.raises(ImageError, match="not binary"):
        synth.generate("cutpaste", _request(examples, tmp_path / "z", masks=masks))


def test_personalize_with_masks_uses_them_for_cutpaste_and_enrolment(examples, tmp_path):
    from edge_persrep.pipeline import PersonalizeRequest, personalize
    from edge_persrep.runtime import Finder

    mask_dir = _masks(examples, tmp_path)
    bundle = personalize(PersonalizeRequest([examples / "dog"], "dog", "dog", tmp_path / "run", synth_method="cutpaste",
                                            negatives=[examples / "negatives"], masks=mask_dir, steps=2))
    assert sorted(p.name for p in (tmp_path / "run" / "masks").iterdir()) == ["000_00.png", "001_01.png", "002_02.png"]
    manifest = json.loads((tmp_path / "run" / "synth" / "manifest.json").read_text())
    assert manifest["generator"] == "cutpaste"
    assert Finder.open(bundle).store.objects["dog"].targets.shape == (3, 1280)


def test_mask_to_grid_marks_half_covered_cells():
    from edge_persrep.runtime.dense import mask_to_grid

    mask = np.zeros((100, 100), bool)
    mask[:50, :60] = True  # on a 2x2 grid: top-left fully, top-right 20% covered
    assert mask_to_grid(mask, (2, 2)).tolist() == [[True, False], [False, False]]
