"""The claim the package exists for, on real photos: after `personalize`, the object is told apart
from same-category look-alikes it never trained against better than by the pretrained backbone
(identity-disjoint protocol; slow: ~12 CPU-minutes)."""

import pytest

pytest.importorskip("torch")

from pathlib import Path  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dreambooth"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="needs the DreamBooth photos beside the repo (../shared/data/dreambooth)")
def test_personalized_beats_pretrained_on_hard_held_out_images(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import json

    import personalization

    argv = ["--data", str(DATA), "--out", str(tmp_path), "--targets", "dog,dog2", "--seeds", "0"]
    assert personalization.main(argv) == 0
    report = json.loads((tmp_path / "personalization.json").read_text())
    mean = report["mean"]
    assert mean["personalized"]["ap"] > mean["pretrained"]["ap"] + 0.02
    assert mean["personalized"]["present_bacc"] >= mean["pretrained"]["present_bacc"]
    for row in report["targets"]:  # the per-image record benchmarks/compare.py pairs on
        result = row["personalized"]["0"]
        assert result["pointing"] == sum(result["pointing_hits"]) / len(result["pointing_hits"])
        assert len(result["scores"]["present"]) == len(result["scores"]["labels"]) == result["n_test"]
