"""Is one personalization benchmark run better than another, or is the difference luck?

Two reports of benchmarks/personalization.py on the same protocol are paired by target, training
seed and test image: a test image the one run gets right and the other wrong is a *discordant* pair.
Under "no difference" each discordant pair goes either way with probability 1/2, so the count of
one side's wins is Binomial(n, 1/2) (McNemar's exact test). Reported per decision a user sees:

    present     is the `present` decision (score >= the object's calibrated threshold) right?
    pointing    does the best region window's centre fall in the object's place? (2x2 / 3x3 scenes
                and the small photo; reports written before 2026-11-30 do not keep it per image)

and per target, the change of the ranking and localisation means (AP, bAcc, pointing, box IoU).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

import numpy as np

PER_TARGET = ("ap", "present_bacc", "pointing", "box_iou", "retrieval_top1")


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact p-value of `wins_a` against `wins_b` discordant pairs, each side 1/2 under the
    null: twice the smaller tail of Binomial(n, 1/2), at most 1 (no pairs: 1)."""
    n, k = wins_a + wins_b, min(wins_a, wins_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


@dataclass(frozen=True)
class Discordance:
    """Paired right/wrong decisions of runs A and B: how often only A, or only B, was right."""

    only_a: int
    only_b: int
    both: int
    neither: int

    @property
    def p_value(self) -> float:
        return sign_test(self.only_a, self.only_b)

    def as_dict(self) -> dict:
        return {"only_a": self.only_a, "only_b": self.only_b, "both": self.both, "neither": self.neither,
                "p_value": round(self.p_value, 4)}


def discordance(right_a: Sequence[bool], right_b: Sequence[bool]) -> Discordance:
    a, b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired decisions differ in number: {a.shape} vs {b.shape} (not the same test images?)")
    return Discordance(int((a & ~b).sum()), int((~a & b).sum()), int((a & b).sum()), int((~a & ~b).sum()))


def present_right(result: dict) -> list[bool]:
    """Per test image of one target's result: was `present` right? (Reports written before
    2026-11-30 keep no decisions: they are redone from the scores and threshold, both rounded to 4
    decimals, so a score within 0.0001 of the threshold may be judged the other way.)"""
    scores = result["scores"]
    present = scores.get("present") or [s >= result["threshold"] for s in scores["test"]]
    return [bool(p) == y for p, y in zip(present, scores["labels"])]


def _check_same_protocol(report_a: dict, report_b: dict) -> None:
    """Reports of other protocols hold other test images: they cannot be paired or merged."""
    a, b = ({"split": "test", **r["protocol"]} for r in (report_a, report_b))  # reports before --split: test
    if a != b:
        raise ValueError(f"different protocols: {a} vs {b}")


def merge_reports(reports: Sequence[dict]) -> dict:
    """Several reports of one benchmark setting (e.g. one process a seed) as one: each target's
    personalized results of every seed, in the first report's target order."""
    first = reports[0]
    for other in reports[1:]:
        _check_same_protocol(first, other)
    rows: dict[str, dict] = {}
    for report in reports:
        for row in report["targets"]:
            merged = rows.setdefault(row["target"], {**row, "personalized": {}})
            for seed, result in row["personalized"].items():
                if seed in merged["personalized"]:
                    raise ValueError(f"{row['target']}: seed {seed} is in two of the reports; give each seed once")
                merged["personalized"][seed] = result
    return {**first, "targets": list(rows.values())}


def pairs(report_a: dict, report_b: dict) -> list[tuple[str, str, dict, dict]]:
    """(target, seed, result A, result B) for every target and seed both reports trained; raises if
    they are not the same protocol (other test images cannot be paired)."""
    _check_same_protocol(report_a, report_b)
    rows_b = {r["target"]: r for r in report_b["targets"]}
    out = []
    for ra in report_a["targets"]:
        rb = rows_b.get(ra["target"])
        if rb is None:
            continue
        for seed in sorted(set(ra["personalized"]) & set(rb["personalized"]), key=int):
            out.append((ra["target"], seed, ra["personalized"][seed], rb["personalized"][seed]))
    if not out:
        raise ValueError("the two reports share no (target, seed): nothing to compare")
    return out


def compare_reports(report_a: dict, report_b: dict) -> dict:
    """Means, per-target changes (B - A, mean over the shared seeds) and the paired tests."""
    paired = pairs(report_a, report_b)
    targets = list(dict.fromkeys(t for t, *_ in paired))
    per_target = {}
    for t in targets:
        rows = [(a, b) for name, _, a, b in paired if name == t]
        per_target[t] = {k: {"a": float(np.mean([a[k] for a, _ in rows])), "b": float(np.mean([b[k] for _, b in rows]))}
                         for k in PER_TARGET}
    means = {k: {side: float(np.mean([per_target[t][k][side] for t in targets])) for side in ("a", "b")}
             for k in PER_TARGET}
    present = discordance([x for *_, a, _ in paired for x in present_right(a)],
                          [x for *_, b in paired for x in present_right(b)])
    report = {"pairs": len(paired), "targets": targets, "seeds": sorted({s for _, s, *_ in paired}, key=int),
              "means": means, "per_target": per_target, "present": present.as_dict(),
              "ap_worse_by_more_than_0.02": [t for t in targets
                                             if per_target[t]["ap"]["b"] - per_target[t]["ap"]["a"] < -0.02],
              "ap_better_by_more_than_0.02": [t for t in targets
                                              if per_target[t]["ap"]["b"] - per_target[t]["ap"]["a"] > 0.02]}
    if all("pointing_hits" in a and "pointing_hits" in b for *_, a, b in paired):
        report["pointing"] = discordance([x for *_, a, _ in paired for x in a["pointing_hits"]],
                                         [x for *_, b in paired for x in b["pointing_hits"]]).as_dict()
    return report
