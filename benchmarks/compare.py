"""Two runs of benchmarks/personalization.py side by side, paired by target, seed and test image.

Is B (e.g. a new preset) worse than A (today's)? Per target, the change of AP, `present` balanced
accuracy, pointing and box IoU (mean over the seeds both trained); over all test images, how often
only A or only B got the `present` decision (and, where both reports keep it, the pointing) right,
with McNemar's exact p-value (eval/paired.py): a small p says the difference is unlikely to be luck.

    python benchmarks/compare.py runs/bench-old/personalization.json runs/bench-new/personalization.json
A side run as one process a seed: its reports joined by commas (A1.json,A2.json).
Prints the tables and writes compare.json beside B's (first) report, or --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_persrep.eval.paired import PER_TARGET, compare_reports, merge_reports
from edge_persrep.runtime.files import atomic_write_json


def _read(paths: str) -> tuple[list[Path], dict]:
    """One side: a report, or several (comma-separated) merged."""
    files, reports = [Path(p) for p in paths.split(",")], []
    for path in files:
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: not a readable personalization.json ({exc}); run benchmarks/personalization.py")
    try:
        return files, merge_reports(reports)
    except ValueError as exc:
        raise SystemExit(f"{paths}: {exc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the baseline's personalization.json (several: comma-separated)")
    ap.add_argument("b", help="the challenger's personalization.json (several: comma-separated)")
    ap.add_argument("--out", type=Path, help="default: compare.json beside B")
    args = ap.parse_args(argv)
    (files_a, report_a), (files_b, report_b) = _read(args.a), _read(args.b)
    try:
        result = compare_reports(report_a, report_b)
    except ValueError as exc:
        raise SystemExit(f"{args.a} vs {args.b}: {exc}")
    for side, files, report in (("a", files_a, report_a), ("b", files_b, report_b)):
        result[side] = {"reports": [str(f) for f in files],
                        **{k: report.get(k) for k in ("preset", "synth", "steps", "train_precision")}}

    print(f"A: {args.a}\nB: {args.b}\n{result['pairs']} (target, seed) pairs, seeds {', '.join(result['seeds'])}\n")
    print("| target | " + " | ".join(f"{k} A | B" for k in PER_TARGET) + " |")
    print("|---|" + "---|---|" * len(PER_TARGET))
    rows = list(result["per_target"].items()) + [("**mean**", result["means"])]
    for target, metrics in rows:
        print(f"| {target} | " + " | ".join(f"{metrics[k]['a']:.3f} | {metrics[k]['b']:.3f}" for k in PER_TARGET)
              + " |")
    print("\n| decision | right only in A | right only in B | both | neither | exact p (two-sided) |")
    print("|---|---|---|---|---|---|")
    for key in ("present", "pointing"):
        if key in result:
            d = result[key]
            print(f"| {key} | {d['only_a']} | {d['only_b']} | {d['both']} | {d['neither']} | {d['p_value']:.3f} |")
    if "pointing" not in result:
        print("| pointing | (a report keeps no per-scene pointing: rerun it with today's benchmark) | | | | |")
    print(f"\nAP worse by more than 0.02 in B: {', '.join(result['ap_worse_by_more_than_0.02']) or 'none'}; "
          f"better: {', '.join(result['ap_better_by_more_than_0.02']) or 'none'}")
    out = args.out or files_b[0].parent / "compare.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
