"""benchmarks/present_errors.py on a hand-made report whose answers are known."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import present_errors  # noqa: E402


def _result(scores, labels, threshold, kinds=None):
    s = {"test": scores, "labels": labels, "present": [int(x >= threshold) for x in scores]}
    if kinds:
        s["kinds"] = kinds
    return {"threshold": threshold, "scores": s}


def test_rates_by_kind_and_threshold_shift_on_a_known_report():
    kinds = ["photo", "small", "photo", "small"]
    # target shown on images 0 and 1; its small view (0.45) misses the 0.5 threshold; an other
    # subject's photo (0.6) passes it
    r = _result([0.9, 0.45, 0.6, 0.1], [True, True, False, False], 0.5, kinds)
    rates = present_errors.by_kind([r])
    assert rates == {"photo": (1.0, 1.0), "small": (0.0, 0.0)}
    assert present_errors.shifted([r], 0.0) == pytest.approx(0.5)  # TPR 1/2, TNR 1/2
    assert present_errors.shifted([r], -0.06) == pytest.approx(0.75)  # 0.44: the small view found, TNR 1/2
    assert present_errors.shifted([r], 0.15) == pytest.approx(0.75)  # 0.65: the other's photo rejected


def test_kinds_of_older_reports_follow_the_protocols_order():
    scores = {"labels": [True] * 12}
    assert present_errors.kinds_of(scores)[:7] == list(present_errors.SCENE_KINDS) + ["photo"]
    with pytest.raises(SystemExit):
        present_errors.kinds_of({"labels": [True] * 5})


def test_threshold_rules_place_the_cut_from_calibration_scores_as_stated():
    # calibration: positives mean 0.7, negatives mean 0.3, both sd 0.1; the runtime's cut is 0.5
    r = _result([0.9, 0.45, 0.5, 0.1], [True, True, False, False], 0.5)
    r["scores"].update(calibration_positives=[0.8, 0.6], calibration_negatives=[0.2, 0.4])
    rules = present_errors.threshold_rules()
    p, n = [np.array(r["scores"][k]) for k in ("calibration_positives", "calibration_negatives")]
    assert rules["mean mix 0.7"](p, n) == pytest.approx(0.42)  # 0.7 x 0.3 + 0.3 x 0.7
    assert rules["equal z"](p, n) == pytest.approx(0.5)  # equal spreads: the midpoint of the means
    # at 0.42 the target's weak view (0.45) is found and the other's 0.5 still passes: 0.5 -> 0.75
    assert present_errors.under_rule([r], rules["mean mix 0.7"]) == (pytest.approx(0.75), 1, 0)
    assert present_errors.under_rule([r], rules["equal z"]) == (pytest.approx(0.5), 0, 0)
