"""Where `present` goes wrong, from a personalization benchmark's JSON (no model is run).

For each model (pretrained, personalized): per kind of test image (protocols.SCENE_KINDS), the
share of the target's images judged present and of other subjects' images judged present; then
the mean balanced accuracy if every object's threshold moved by the same amount (a calibration
bias would show as a better shift than 0); then the mean balanced accuracy under other rules for
placing each threshold from the same calibration scores (reports since 2026-12-05 keep them). A
diagnostic of what limits `present`: nothing is chosen with it.

    python benchmarks/present_errors.py runs/bench-s5/personalization.json
Prints the tables and writes present_errors.json beside the report (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_persrep.eval.protocols import SCENE_KINDS
from edge_persrep.eval.target_metrics import present_metrics
from edge_persrep.runtime.files import atomic_write_json

SHIFTS = (-0.06, -0.04, -0.02, 0.0, 0.02, 0.04)
MIX_WEIGHTS = (0.6, 0.7, 0.8)


def threshold_rules() -> dict:
    """Ways to place a threshold from calibration scores (positives, negatives: arrays) besides the
    runtime's (finder.decision_threshold: the midpoint of the gap, else the best cut):
    "mean mix w": w x the negatives' mean + (1 - w) x the positives' mean; "equal z": where the
    cut lies as many standard deviations above the negatives' mean as below the positives'."""
    rules = {f"mean mix {w}": (lambda w: lambda p, n: w * n.mean() + (1 - w) * p.mean())(w) for w in MIX_WEIGHTS}
    rules["equal z"] = lambda p, n: (n.mean() * p.std() + p.mean() * n.std()) / (n.std() + p.std())
    return rules


def under_rule(results: list[dict], rule) -> tuple[float, int, int]:
    """Mean balanced accuracy with each threshold placed by `rule`, and how many results it moves up
    and down by more than 0.005 against their calibrated thresholds."""
    def bacc(r, threshold):
        return present_metrics([x >= threshold for x in r["scores"]["test"]], r["scores"]["labels"])[0]
    pairs = [(bacc(r, rule(np.array(r["scores"]["calibration_positives"]),
                           np.array(r["scores"]["calibration_negatives"]))), bacc(r, r["threshold"])) for r in results]
    change = np.array([a - b for a, b in pairs])
    return float(np.mean([a for a, _ in pairs])), int((change > 0.005).sum()), int((change < -0.005).sum())


def kinds_of(scores: dict) -> list[str]:
    """Each test image's kind: recorded by runs since 2026-12-06; before, the order
    disjoint_test_set makes them in (every held-out photo gives one of each SCENE_KINDS, in order)."""
    if "kinds" in scores:
        return scores["kinds"]
    n = len(scores["labels"])
    if n % len(SCENE_KINDS):
        raise SystemExit(f"{n} test images are not whole groups of {len(SCENE_KINDS)}: not an identity-disjoint report")
    return [SCENE_KINDS[i % len(SCENE_KINDS)] for i in range(n)]


def results_of(report: dict, model: str) -> list[dict]:
    """Every (target, seed) result of one model."""
    if model == "pretrained":
        return [t["pretrained"] for t in report["targets"]]
    return [r for t in report["targets"] for r in t.get("personalized", {}).values()]


def by_kind(results: list[dict]) -> dict[str, tuple[float, float]]:
    """kind -> (share of the target's images called present, share of the others' called present)."""
    hits: dict[str, list[bool]] = {k: [] for k in SCENE_KINDS}
    false: dict[str, list[bool]] = {k: [] for k in SCENE_KINDS}
    for r in results:
        s = r["scores"]
        for kind, label, present in zip(kinds_of(s), s["labels"], s["present"]):
            (hits if label else false)[kind].append(bool(present))
    return {k: (float(np.mean(hits[k])), float(np.mean(false[k]))) for k in SCENE_KINDS if hits[k] and false[k]}


def shifted(results: list[dict], shift: float) -> float:
    """Mean balanced accuracy with every threshold moved by `shift`."""
    return float(np.mean([present_metrics([x >= r["threshold"] + shift for x in r["scores"]["test"]],
                                          r["scores"]["labels"])[0] for r in results]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a benchmarks/personalization.py JSON")
    ap.add_argument("--out", type=Path, help="default: present_errors.json beside the report")
    args = ap.parse_args(argv)
    report = json.loads(args.report.read_text())
    out = {}
    for model in ("pretrained", "personalized"):
        results = results_of(report, model)
        if not results:
            continue
        kinds = by_kind(results)
        shifts = {s: shifted(results, s) for s in SHIFTS}
        out[model] = {"by_kind": kinds, "threshold_shift": shifts}
        if all("calibration_positives" in r["scores"] for r in results):
            out[model]["threshold_rules"] = {name: under_rule(results, rule)
                                             for name, rule in threshold_rules().items()}
        print(f"\n{model} ({len(results)} target-seed results, split {report['protocol']['split']})")
        print("| kind | target's images called present | others' images called present |")
        print("|---|---|---|")
        for k, (hit, false) in kinds.items():
            print(f"| {k} | {hit:.3f} | {false:.3f} |")
        print("threshold shift -> mean present bAcc: " + ", ".join(f"{s:+.2f}: {v:.3f}" for s, v in shifts.items()))
        rules = out[model].get("threshold_rules")
        if rules:
            print(f"threshold rule -> mean present bAcc (results better / worse): calibrated {shifts[0.0]:.3f}, "
                  + ", ".join(f"{name} {v:.3f} ({up} / {down})" for name, (v, up, down) in rules.items()))
    out_path = args.out or args.report.with_name("present_errors.json")
    atomic_write_json(out_path, {"report": str(args.report), **out})
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
