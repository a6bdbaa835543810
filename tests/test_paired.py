"""Paired comparison of two benchmark reports (eval/paired.py, benchmarks/compare.py): the exact
sign test against hand-computed binomial tails, and a comparison whose answer is known."""

import json
import sys
from pathlib import Path

import pytest

from edge_persrep.eval.paired import compare_reports, discordance, merge_reports, sign_test

PROTOCOL = {"name": "identity-disjoint", "seed": 20250101, "refs_per_target": 3}


def test_sign_test_matches_the_binomial_tail_by_hand():
    # 9 against 2 of 11 discordant pairs: 2 * (C(11,0) + C(11,1) + C(11,2)) / 2**11 = 2 * 67 / 2048
    assert sign_test(9, 2) == pytest.approx(134 / 2048)
    assert sign_test(2, 9) == sign_test(9, 2)
    assert sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(3, 3) == 1.0  # even split: capped at 1
    assert sign_test(0, 0) == 1.0  # nothing discordant: no evidence either way
    scipy_stats = pytest.importorskip("scipy.stats")
    for a, b in [(9, 2), (40, 25), (0, 7), (12, 12)]:
        assert sign_test(a, b) == pytest.approx(scipy_stats.binomtest(a, a + b, 0.5).pvalue)


def test_discordance_counts_each_kind_of_pair():
    d = discordance([1, 1, 0, 0, 1], [1, 0, 1, 0, 0])
    assert (d.only_a, d.only_b, d.both, d.neither) == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="differ in number"):
        discordance([1, 0], [1])


def _result(ap, scores, labels, threshold, hits):
    return {"ap": ap, "present_bacc": 0.5, "pointing": sum(hits) / len(hits), "pointing_hits": hits,
            "box_iou": 0.4, "retrieval_top1": 1.0, "threshold": threshold,
            "scores": {"test": scores, "labels": labels, "present": [int(s >= threshold) for s in scores]}}


def _report(results_by_target):
    return {"protocol": PROTOCOL, "targets": [{"target": t, "personalized": r} for t, r in results_by_target.items()]}


def test_a_comparison_whose_answer_is_known(tmp_path):
    labels = [True, False, False, True]
    # A: right on all four; B: misses the first positive (its score under B's threshold) on both seeds
    a = _report({"dog": {"1": _result(0.9, [0.8, 0.1, 0.2, 0.7], labels, 0.5, [1, 1]),
                         "2": _result(0.8, [0.8, 0.1, 0.2, 0.7], labels, 0.5, [1, 0])},
                 "cat": {"1": _result(0.7, [0.9, 0.1, 0.1, 0.9], labels, 0.5, [1, 1])}})
    b = _report({"dog": {"1": _result(0.8, [0.4, 0.1, 0.2, 0.7], labels, 0.5, [0, 1]),
                         "2": _result(0.7, [0.4, 0.1, 0.2, 0.7], labels, 0.5, [1, 1]),
                         "3": _result(0.1, [0.0, 0.0, 0.0, 0.0], labels, 0.5, [0, 0])},  # A has no seed 3
                 "cat": {"1": _result(0.71, [0.9, 0.1, 0.1, 0.9], labels, 0.5, [1, 1])}})
    result = compare_reports(a, b)
    assert result["pairs"] == 3 and result["seeds"] == ["1", "2"]
    assert result["present"] == {"only_a": 2, "only_b": 0, "both": 10, "neither": 0, "p_value": 0.5}
    assert result["pointing"]["only_a"] == 1 and result["pointing"]["only_b"] == 1
    assert result["per_target"]["dog"]["ap"] == {"a": pytest.approx(0.85), "b": pytest.approx(0.75)}
    assert result["ap_worse_by_more_than_0.02"] == ["dog"] and result["ap_better_by_more_than_0.02"] == []

    # the script: tables, and compare.json beside B
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compare

    paths = []
    for name, report in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "personalization.json")
        paths[-1].write_text(json.dumps(report))
    assert compare.main([str(p) for p in paths]) == 0
    written = json.loads((tmp_path / "b" / "compare.json").read_text())
    assert written["present"]["only_a"] == 2


def test_reports_of_other_protocols_are_not_paired(tmp_path):
    a = _report({"dog": {"1": _result(0.9, [0.8], [True], 0.5, [1])}})
    b = dict(_report({"dog": {"1": _result(0.9, [0.8], [True], 0.5, [1])}}), protocol={**PROTOCOL, "seed": 1})
    with pytest.raises(ValueError, match="different protocols"):
        compare_reports(a, b)
    with pytest.raises(ValueError, match="share no"):
        compare_reports(a, _report({"cat": {"1": _result(0.9, [0.8], [True], 0.5, [1])}}))
    validation = dict(a, protocol={**PROTOCOL, "split": "validation"})  # other test images: seen identities
    with pytest.raises(ValueError, match="different protocols"):
        compare_reports(a, validation)
    compare_reports(a, dict(a, protocol={**PROTOCOL, "split": "test"}))  # before --split, every report was "test"


def test_reports_of_one_seed_each_merge_into_one():
    r = _result(0.9, [0.8], [True], 0.5, [1])
    seed1 = _report({"dog": {"1": r}, "cat": {"1": r}})
    seed2 = _report({"cat": {"2": r}, "dog": {"2": r}})
    merged = merge_reports([seed1, seed2])
    assert [t["target"] for t in merged["targets"]] == ["dog", "cat"]
    assert all(sorted(t["personalized"]) == ["1", "2"] for t in merged["targets"])
    assert seed1["targets"][0]["personalized"] == {"1": r}  # the inputs are left as they were
    with pytest.raises(ValueError, match="seed 1 is in two"):
        merge_reports([seed1, seed1])
