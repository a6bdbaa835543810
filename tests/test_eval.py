"""`edge-persrep eval` end to end on a small procedural set: report.json and index.html."""

import json

import pytest
from conftest import run_cli  # noqa: F401 (fixtures live in conftest)

pytest.importorskip("torch")


def test_report_has_every_task_split_and_model(small_report):
    report = json.loads((small_report / "report.json").read_text())
    assert set(report["results"]) == {"pretrained", "cutpaste"}
    assert report["objects"] == ["mug1", "ball1"] and set(report["splits"]) == {"in_distribution", "pose",
                                                                               "distractors", "both"}
    for model in report["results"]:
        table = report["summary"][model]["all"]
        for metric in ("classification_ap", "retrieval_top1", "retrieval_ndcg", "detection_map", "detection_map50",
                       "segmentation_map", "segmentation_map50"):
            assert 0.0 <= table[metric] <= 1.0, (model, metric)
    assert any(k.startswith("personalize_cutpaste_") for k in report["timings"])
    page = (small_report / "index.html").read_text()
    assert "classification AP" in page and "<svg" in page
    assert len(list((small_report / "img").glob("*.jpg"))) >= 8
