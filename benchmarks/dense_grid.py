"""A finer patch grid for detect and segment? The same models exported at several input sizes
(Lite: 320 px = 10x10 grid, 448 = 14x14, 640 = 20x20), scored on a dataset with boxes and masks.

Per size: the pretrained bundle and each given run re-exported (`export RUN --input-size S`), then
every object's classification AP, detection and segmentation COCO mAP / mAP50 per split (the
eval runner's scoring), and the median latency of one model run and of `find` (all tasks) on one
photo, measured side by side in this one process. `--baseline-boxes` also scores the same bundles
with the box rule before `dense.object_window` (the largest blob of the similarity map), side by side.

    edge-persrep make-dataset procedural --out data/proc --objects 8
    edge-persrep eval data/proc --synth augment --objects mug1,mug2,ball1,ball2 --steps 80 --out runs/eval
    python benchmarks/dense_grid.py data/proc --runs runs/eval/work/models/augment/* --sizes 320,448,640
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_persrep.eval.bench import median_ms
from edge_persrep.eval.runner import load_pods, score_bundle
from edge_persrep.pipeline import RunDir, export_pretrained, export_run
from edge_persrep.runtime import Bundle, Finder, PrototypeStore
from edge_persrep.runtime.images import load_image, resize_to_input

METRICS = ("classification_ap", "detection_map50", "detection_map", "segmentation_map50", "segmentation_map")


def mean_over(results: dict, splits: list[str] | None = None) -> dict:
    """{metric: mean over objects and the given splits (all by default)}."""
    values: dict[str, list[float]] = {}
    for per_split in results.values():
        for split, metrics in per_split.items():
            if splits is None or split in splits:
                for k in METRICS:
                    if k in metrics:
                        values.setdefault(k, []).append(metrics[k])
    return {k: round(float(np.mean(v)), 4) for k, v in values.items()}


class LargestBlobFinder(Finder):
    """The box rule before object_window: no extent, so `localize` keeps the largest blob of the
    similarity map's Otsu cut."""

    def _object_extent(self, features, p):
        return None


def latency(bundle_dir: Path, obj, photo: Path, repeats: int) -> dict:
    """Median ms of one model run and of `find` (all tasks) with one object enrolled, on one photo."""
    bundle = Bundle.load(bundle_dir)
    layout = bundle.layout
    finder = Finder(bundle, PrototypeStore(bundle.model_sha256, layout.embedding_dim, layout.grid_dim))
    finder.store.add(finder.make_prototype(obj.name, obj.train, obj.category))
    image = load_image(photo)
    batch = resize_to_input(image, finder.bundle.input_size)[None]
    return {"session_run_ms": round(median_ms(lambda: finder.bundle.run(batch), repeats), 2),
            "find_all_ms": round(median_ms(lambda: finder.find(finder.embed([image])[0], "all"), repeats), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="a PODS-style dataset (`edge-persrep make-dataset procedural`)")
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="personalize run directories to re-export")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sizes", default="320,448,640")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/dense_grid"))
    ap.add_argument("--baseline-boxes", action="store_true", help="also score with the largest-blob box rule")
    args = ap.parse_args(argv)
    evalset = load_pods(args.dataset)
    objects = {o.name: o for o in evalset.objects}
    runs = {RunDir(r).read()["name"]: r for r in args.runs}
    chosen = [objects[n] for n in runs] or evalset.objects
    splits = sorted({t.split for t in evalset.tests})
    photo = evalset.tests[0].path
    report: dict = {"dataset": str(args.dataset), "objects": [o.name for o in chosen], "splits": splits, "sizes": {}}
    for size in map(int, args.sizes.split(",")):
        row: dict = {}
        pretrained = export_pretrained(args.backbone, args.out / f"pretrained-{size}", force=True, size=size)
        timing = latency(pretrained, chosen[0], photo, args.repeats)
        row["pretrained"] = {"results": score_bundle(pretrained, evalset, chosen), **timing}
        if args.baseline_boxes:
            row["pretrained, largest blob"] = {
                "results": score_bundle(pretrained, evalset, chosen, finder_class=LargestBlobFinder), **timing}
        if runs:
            bundles = {name: export_run(run, args.out / f"{name}-{size}", force=True, size=size)
                       for name, run in runs.items()}
            timing = latency(bundles[chosen[0].name], chosen[0], photo, args.repeats)
            row["personalized"] = {"results": {n: score_bundle(b, evalset, [objects[n]])[n]
                                               for n, b in bundles.items()}, **timing}
            if args.baseline_boxes:
                row["personalized, largest blob"] = {
                    "results": {n: score_bundle(b, evalset, [objects[n]], finder_class=LargestBlobFinder)[n]
                                for n, b in bundles.items()}, **timing}
        for model in row.values():
            model["all"] = mean_over(model["results"])
            model["per_split"] = {s: mean_over(model["results"], [s]) for s in splits}
        report["sizes"][size] = row
        layout = Finder.open(pretrained).bundle.layout
        grid = (layout.grid_height, layout.grid_width)
        for model, r in row.items():
            scores = "  ".join(f"{k} {v:.3f}" for k, v in r["all"].items())
            print(f"{size}px ({grid[0]}x{grid[1]}) {model:26s} {scores}"
                  + f"  run {r['session_run_ms']:.1f} ms  find {r['find_all_ms']:.1f} ms", flush=True)
    print("\n| size | grid | model | split | cls AP | det mAP50 | det mAP | seg mAP50 | seg mAP | run ms | find ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, row in report["sizes"].items():
        for model, r in row.items():
            for split, m in [("all", r["all"]), *r["per_split"].items()]:
                cells = " | ".join(f"{m[k]:.3f}" if k in m else "" for k in METRICS)
                print(f"| {size} | {size // 32}x{size // 32} | {model} | {split} | {cells} | "
                      f"{r['session_run_ms']:.1f} | {r['find_all_ms']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dense_grid.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'dense_grid.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
