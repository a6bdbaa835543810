"""Generators: deterministic per-image seeds, resumable, manifest complete, masks validated."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from conftest import box_masks  # noqa: E402

from edge_persrep.runtime import EdgePersrepError, ImageError, list_images  # noqa: E402
from edge_persrep.server_side import synth  # noqa: E402
from edge_persrep.server_side.contrastive import in_context_rows  # noqa: E402


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


def test_context_alternates_photos_and_the_object_small_on_the_negatives(examples, tmp_path):
    from edge_persrep.server_side.synth.context import CONTEXT_SCALE

    photos = list_images([examples / "dog"])
    negatives = list_images([examples / "negatives"])
    masks = synth.match_masks(photos, _masks(examples, tmp_path))
    result = synth.generate("context", _request(examples, tmp_path / "ctx", masks=masks, backgrounds=negatives))
    entries = json.loads(result.manifest.read_text())["images"]
    assert [e["kind"] for e in entries] == ["photo", "in_context"] * 3
    assert [e["source"] for e in entries] == ["00.jpg", "00.jpg", "01.jpg", "01.jpg", "02.jpg", "02.jpg"]
    for entry, path in zip(entries[1::2], result.positives[1::2]):
        x0, y0, x1, y1 = entry["box"]
        assert CONTEXT_SCALE[0] <= entry["scale"] <= CONTEXT_SCALE[1]
        assert max(x1 - x0, y1 - y0) <= round(CONTEXT_SCALE[1] * 0.6 * 256) + 1  # small: under half the side
        assert entry["background"] in {p.name for p in negatives}
        # outside the pasted box the image is the negative photo, resized
        background = np.asarray(Image.open(negatives[[p.name for p in negatives].index(entry["background"])])
                                .convert("RGB").resize((256, 256), Image.BICUBIC), np.float32)
        image = np.asarray(Image.open(path), np.float32)
        outside = np.ones((256, 256), bool)
        outside[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
        assert np.abs(image - background)[outside].mean() < 4  # JPEG noise only
    with pytest.raises(EdgePersrepError, match="needs object masks"):
        synth.generate("context", _request(examples, tmp_path / "no-masks"))


def test_context_sparse_puts_one_positive_in_eight_in_context(examples, tmp_path):
    photos = list_images([examples / "dog"])
    masks = synth.match_masks(photos, _masks(examples, tmp_path))
    request = _request(examples, tmp_path / "sparse", masks=masks, backgrounds=list_images([examples / "negatives"]))
    request.count = 16
    assert in_context_rows(16, 16 // 8, 16) == 2 and in_context_rows(16, 8, 16) == 8  # a batch's share
    assert in_context_rows(16, 1, 96) == 1 and in_context_rows(16, 96, 96) == 8 and in_context_rows(16, 0, 96) == 0
    entries = json.loads(synth.generate("context-sparse", request).manifest.read_text())["images"]
    assert [e["kind"] for e in entries] == (["photo"] * 7 + ["in_context"]) * 2
    assert [e["source"] for e in entries] == ["00.jpg"] * 8 + ["01.jpg"] * 8


def test_occlude_covers_part_of_every_other_augmented_photo_with_a_colour_field_not_a_negative(examples, tmp_path):
    from edge_persrep.server_side.synth.occlude import OCCLUDED_AREA

    negatives = list_images([examples / "negatives"])
    result = synth.generate("occlude", _request(examples, tmp_path / "occ", backgrounds=negatives))
    plain = synth.generate("augment", _request(examples, tmp_path / "aug"))
    entries = json.loads(result.manifest.read_text())["images"]
    assert [e["kind"] for e in entries] == ["photo", "occluded"] * 3
    assert [e["source"] for e in entries] == ["00.jpg", "00.jpg", "01.jpg", "01.jpg", "02.jpg", "02.jpg"]
    areas = []
    for entry, path in zip(entries[1::2], result.positives[1::2]):
        x0, y0, x1, y1 = entry["occluder"]
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
        areas.append((x1 - x0) * (y1 - y0) / 256**2)
        image = np.asarray(Image.open(path), np.float32)
        cover = image[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
        # a smooth colour field: neighbouring pixels differ by a few levels (a photo's edges by far more)
        assert np.abs(np.diff(cover, axis=1)).mean() < 3, entry
    assert all(OCCLUDED_AREA[0] * 0.9 <= a <= OCCLUDED_AREA[1] * 1.1 for a in areas)
    # the photos under the covers are augment's own augmentations, drawn the same way
    unoccluded = np.asarray(Image.open(result.positives[0]), np.float32)
    assert np.abs(unoccluded - np.asarray(Image.open(plain.positives[0]), np.float32)).max() == 0
    # every negative once more, covered the same way: the cover is no cue for "positive"
    made = json.loads((tmp_path / "occ" / "negatives.json").read_text())["images"]
    assert len(result.negatives) == len(negatives) and [e["source"] for e in made] == [p.name for p in negatives]
    assert all(e["kind"] == "occluded" and len(e["occluder"]) == 4 for e in made)
    assert not synth.generate("occlude", _request(examples, tmp_path / "none")).negatives  # no backgrounds, none


def test_found_masks_cover_the_object(examples, tmp_path):
    """Oracle: the dog pasted at a known box on a background photo; the negatives are the
    backgrounds alone. Foreground discovery must cover the dog's box and mark mostly it: the box is
    a quarter of the photo, so marking everything would score 0.25 on the first check."""
    from conftest import paste_scene

    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.object_masks import find_object_masks

    dogs = list_images([examples / "dog"])
    backgrounds = list_images([examples / "backgrounds"])
    boxes = [(40, 60, 220, 260), (150, 30, 340, 210), (90, 140, 280, 330)]
    (tmp_path / "photos").mkdir()
    photos = []
    for i, (dog, box) in enumerate(zip(dogs, boxes)):
        photos.append(tmp_path / "photos" / f"{i}.png")
        paste_scene(Image.open(dog), Image.open(backgrounds[i]), box).save(photos[-1])
    found = find_object_masks(create_backbone("efficientnet_lite0"), photos, backgrounds[3:])
    for mask, (x0, y0, x1, y1) in zip(found, boxes):
        assert mask.shape == (384, 384)
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert (mask & inside).sum() / mask.sum() >= 0.5  # measured 0.62-0.92: cells are 32 px, smoothed
        # measured 0.83-0.95: the photo's border ring counts as backdrop, so the box whose lower edge
        # lies one cell from the photo's loses that cell (0.91-0.92 before the ring, at 0.62-0.81 above)
        assert (mask & inside).sum() / inside.sum() >= 0.8


def test_personalize_with_context_finds_masks_when_none_are_given(examples, tmp_path):
    from edge_persrep.pipeline import PersonalizeRequest, personalize

    request = PersonalizeRequest([examples / "dog"], "dog", "dog", tmp_path / "run", synth_method="context",
                                 negatives=[examples / "negatives"], steps=2)
    personalize(request)
    found = sorted((tmp_path / "run" / "found_masks").iterdir())
    assert [p.name for p in found] == ["000_00.png", "001_01.png", "002_02.png"]
    for mask in found:
        share = (np.asarray(Image.open(mask)) > 127).mean()
        assert 0.05 < share < 0.95  # a part of the photo, neither nothing nor everything
    manifest = json.loads((tmp_path / "run" / "synth" / "manifest.json").read_text())
    assert manifest["generator"] == "context" and len(manifest["images"]) == 96
    stamps = [p.stat().st_mtime_ns for p in found]
    personalize(request)  # a rerun finds the saved masks and does not redo them
    assert [p.stat().st_mtime_ns for p in found] == stamps
