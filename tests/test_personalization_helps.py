"""The claim the package exists for, on real photos: after `personalize`, the object is told apart
from same-category look-alikes better than by the pretrained backbone (slow: ~4 CPU-minutes)."""

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

    assert personalization.main(["--data", str(DATA), "--out", str(tmp_path), "--subjects", "dog,dog2"]) == 0
    report = json.loads((tmp_path / "personalization.json").read_text())
    assert report["mean"]["ap"]["personalized"] > report["mean"]["ap"]["pretrained"] + 0.02
