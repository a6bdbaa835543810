"""Does personalization help on identities training never saw? Pretrained vs personalized Lite0.

Identity-disjoint protocol (eval/protocols.py): for each target (default: every DreamBooth subject
with a same-category look-alike, 21 of 30), the other subjects are split into *seen* (the training
negatives and the enrolment calibration negatives, as a user's `--negatives`) and *unseen* (the
only distractors in the test and in the retrieval gallery). Test images come from held-out photos
of the target and the unseen subjects: the photo, a crop, an occlusion, the photo small on another
photo, and 2x2 / 3x3 scenes among unseen look-alikes. Both models enrol the target from its first
3 photos with the same seen negatives; the personalized one is trained with `--seeds` seeds.

Reported per target and model (what the user sees first):
    present_bacc / present_f1   the `present` decision at the calibrated threshold: balanced
                                accuracy and F1 over the test images (label: the target is shown)
    ap / ap_global              classification AP of the runtime's score (global + region) and of
                                the paper's global score alone
    present_bacc_best           the best balanced accuracy any threshold reaches on this test (a
                                diagnostic, never used to choose anything): present_bacc far below
                                it is the calibration's error, present_bacc near it the ranking's
    present_bacc_global         `present` as before region scoring: the global score against a
                                threshold calibrated on global scores (side by side, same features)
    pointing                    scenes where the best region window's centre lies in the target's cell
    box_iou                     mean IoU of `find`'s box (similarity map, Otsu, the blob at the
                                object's window: dense.object_window) with the target's cell, on
                                small / scene images
    retrieval_top1              single-subject images of the target: is the nearest of the gallery
                                (target + unseen subjects' reference photos) the target's?

    python benchmarks/personalization.py --data ../shared/data/dreambooth --out runs/bench-personalization
    python benchmarks/personalization.py ... --targets dog,dog2 --seeds 0 --steps 20   (small, fast)
Prints tables and writes OUT/personalization.json. Personalized runs resume (one run directory per
target and seed); `--seeds ''` evaluates the pretrained model only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.protocols import (
    PROTOCOL_SEED,
    SINGLE_KINDS,
    disjoint_test_set,
    identity_split,
    lookalike_targets,
    write_negatives,
)
from edge_persrep.pipeline import PersonalizeRequest, RunDir, export_pretrained, personalize
from edge_persrep.runtime import Bundle, Finder, PrototypeStore
from edge_persrep.runtime.files import atomic_write_json
from edge_persrep.runtime.images import load_image
from edge_persrep.runtime.metrics import average_precision, best_balanced_accuracy, box_iou, point_in_box

METRICS = ("present_bacc", "present_f1", "present_bacc_best", "ap", "ap_global", "present_bacc_global", "pointing",
           "box_iou", "retrieval_top1")


def present_metrics(present: list[bool], labels: list[bool]) -> tuple[float, float]:
    """Balanced accuracy and F1 of yes/no decisions (both 0 for F1 when nothing is found)."""
    p, y = np.asarray(present, bool), np.asarray(labels, bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    tpr = tp / max(1, y.sum())
    tnr = float((~p & ~y).sum()) / max(1, (~y).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return (tpr + tnr) / 2, f1


def evaluate(bundle_dir: Path, target: str, subjects, split, test, calibration_negatives: list[Path]) -> dict:
    """`calibration_negatives`: what enrolment calibrates on (the pretrained model: every seen
    negative, as a user would; a personalized run: what its enrolment used, `--calibrate-on`)."""
    bundle = Bundle.load(bundle_dir)
    finder = Finder(bundle, PrototypeStore(bundle.model_sha256, bundle.layout.embedding_dim, bundle.layout.grid_dim))
    s = subjects[target]
    calibration = {}
    scores_of = finder._calibration_scores

    def recorded(*args):  # diagnostic: the scores enrolment calibrated on, saved in the report
        calibration["positives"], calibration["negatives"] = scores_of(*args)
        return calibration["positives"], calibration["negatives"]

    finder._calibration_scores = recorded
    finder.store.add(finder.make_prototype(target, s.photos[:3], s.category, negatives=calibration_negatives))
    del finder._calibration_scores
    proto = finder.store.objects[target]
    paper = finder.make_prototype(target, s.photos[:3], s.category, negatives=calibration_negatives, scoring="global")
    feats = finder.embed([t.image for t in test])
    matches = [finder.classify(f)[0] for f in feats]
    labels = [target in t.subjects for t in test]
    bacc, f1 = present_metrics([m.present for m in matches], labels)
    bacc_global, _ = present_metrics([m.global_score >= paper.threshold for m in matches], labels)
    gallery_names = (target,) + split.unseen
    gallery = finder.embed([load_image(p) for n in gallery_names for p in subjects[n].photos[:3]])
    owner = np.array([n for n in gallery_names for _ in subjects[n].photos[:3]])
    g = np.stack([x.embedding for x in gallery])
    top1, pointing, ious = [], [], []
    for t, f, m in zip(test, feats, matches):
        if target not in t.subjects:
            continue
        if t.kind in SINGLE_KINDS:
            top1.append(owner[int(np.argmax(g @ f.embedding))] == target)
        if t.kind in ("small", "scene2x2", "scene3x3"):
            x0, y0, x1, y1 = m.region_box
            pointing.append(point_in_box(((x0 + x1) / 2, (y0 + y1) / 2), t.boxes[target]))
            located = finder.locate(f, m, with_mask=False)
            ious.append(box_iou(located.box, t.boxes[target]) if located.box is not None else 0.0)
    return {"present_bacc": bacc, "present_f1": f1,
            "present_bacc_best": best_balanced_accuracy([m.score for m in matches], labels),
            "ap": average_precision([m.score for m in matches], labels),
            "ap_global": average_precision([m.global_score for m in matches], labels),
            "present_bacc_global": bacc_global, "threshold_global": round(paper.threshold, 4),
            "pointing": float(np.mean(pointing)), "box_iou": float(np.mean(ious)),
            "retrieval_top1": float(np.mean(top1)), "threshold": round(proto.threshold, 4),
            "n_pos": int(sum(labels)), "n_test": len(test),
            "scores": {"test": [round(m.score, 4) for m in matches], "labels": labels,
                       "calibration_positives": [round(x, 4) for x in calibration["positives"]],
                       "calibration_negatives": [round(x, 4) for x in calibration["negatives"]]}}


def negatives_folder(subjects, split, target: str, out: Path) -> Path:
    """The seen subjects' reference photos: all 3 of each same-category one, 1 of each other."""
    category = subjects[target].category
    return write_negatives(out / "negatives" / target,
                           {n: subjects[n].photos[:3] if subjects[n].category == category else subjects[n].photos[:1]
                            for n in split.seen})


def unused_photos(subjects, split, target: str) -> list[Path]:
    """The seen subjects' photos that `negatives_folder` leaves out (same category: past the 3rd;
    other categories: past the 1st): identities training met, photos it did not."""
    category = subjects[target].category
    return [p for n in split.seen for p in subjects[n].photos[3 if subjects[n].category == category else 1:]]


def summarize(rows: list[dict], seeds: list[int]) -> dict:
    """Mean over targets per model; for the personalized model, mean and spread over seeds."""
    summary = {"pretrained": {k: float(np.mean([r["pretrained"][k] for r in rows])) for k in METRICS}}
    if seeds:
        per_seed = {k: [float(np.mean([r["personalized"][str(sd)][k] for r in rows])) for sd in seeds] for k in METRICS}
        summary["personalized"] = {k: float(np.mean(v)) for k, v in per_seed.items()}
        summary["personalized_seed_std"] = {k: float(np.std(v)) for k, v in per_seed.items()}
        deltas = [r["ap_change"] for r in rows]
        summary["worst_ap_change"] = float(min(deltas))
        summary["targets_losing_more_than_0.02_ap"] = [r["target"] for r in rows if r["ap_change"] < -0.02]
    return summary


def print_tables(rows: list[dict], summary: dict, seeds: list[int]) -> None:
    print("\n| target | category | seen / unseen | AP pre | AP pers | dAP | present bAcc pre | pers "
          "| pointing pre | pers "
          "| box IoU pre | pers | top-1 pre | pers |")
    print("|" + "---|" * 15)
    for r in rows:
        b = r["pretrained"]
        a = r["personalized_mean"] if seeds else {k: float("nan") for k in METRICS}
        print(f"| {r['target']} | {r['category']} | {r['seen']} / {r['unseen']} | {b['ap']:.3f} | {a['ap']:.3f} | "
              f"{r.get('ap_change', float('nan')):+.3f} | {b['present_bacc']:.3f} | {a['present_bacc']:.3f} | "
              f"{b['pointing']:.3f} | {a['pointing']:.3f} | {b['box_iou']:.3f} | {a['box_iou']:.3f} | "
              f"{b['retrieval_top1']:.3f} | {a['retrieval_top1']:.3f} |")
    print("\n| model | " + " | ".join(METRICS) + " |")
    print("|" + "---|" * (len(METRICS) + 1))
    for model in ("pretrained", "personalized"):
        if model in summary:
            std = summary.get(f"{model}_seed_std", {})
            cells = [f"{summary[model][k]:.3f}" + (f" ± {std[k]:.3f}" if k in std else "") for k in METRICS]
            print(f"| {model} | " + " | ".join(cells) + " |")


def write_report(args, seeds: list[int], rows: list[dict], complete: bool) -> None:
    """OUT/personalization.json, rewritten after every target so that a long run killed part-way keeps its
    results (`complete` says whether every target is in)."""
    report = {"protocol": {"name": "identity-disjoint", "seed": PROTOCOL_SEED, "refs_per_target": 3},
              "calibrate_on": args.calibrate_on, "enrol_on": args.enrol_on, "synth": args.synth, "preset": args.preset,
              "steps": args.steps, "seeds": seeds, "complete": complete,
              "targets": rows, "mean": summarize(rows, seeds)}
    atomic_write_json(args.out / "personalization.json", report)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the DreamBooth dataset folder")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-personalization"))
    ap.add_argument("--targets", help="comma-separated subjects (default: every one with a same-category look-alike)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--synth", default="augment", help="personalize --synth: augment | context | ...")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of the personalized model ('' = pretrained only)")
    ap.add_argument("--calibrate-on", default="training", help="personalize --calibrate-on: training | held-out")
    ap.add_argument("--enrol-on", default="run", choices=["run", "unused-photos"],
                    help="what both models' enrolment calibrates on: the run's own choice (the negatives folder, "
                         "or --calibrate-on's held-out part), or the seen identities' photos training did not use")
    args = ap.parse_args(argv)

    subjects = load_dreambooth(args.data)
    targets = args.targets.split(",") if args.targets else lookalike_targets(subjects)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.out / "pretrained"
    if not (pretrained / "bundle.json").is_file():
        export_pretrained("efficientnet_lite0", pretrained, force=True)

    rows = []
    for target in targets:
        s = subjects[target]
        split = identity_split(subjects, target)
        test = disjoint_test_set(subjects, split)
        negatives = negatives_folder(subjects, split, target, args.out)
        seen_negatives = sorted(negatives.iterdir())
        unused = unused_photos(subjects, split, target) if args.enrol_on == "unused-photos" else None
        row = {"target": target, "category": s.category, "seen": len(split.seen), "unseen": len(split.unseen),
               "note": split.note,
               "pretrained": evaluate(pretrained, target, subjects, split, test, unused or seen_negatives),
               "personalized": {}, "personalize_seconds": {}}
        for seed in seeds:
            started = time.time()
            bundle = personalize(PersonalizeRequest(
                s.photos[:3], target, s.category, args.out / "runs" / args.synth / f"{target}-seed{seed}",
                negatives=[negatives], synth_method=args.synth, preset=args.preset, steps=args.steps, seed=seed,
                device="cpu", calibrate_on=args.calibrate_on))
            row["personalize_seconds"][str(seed)] = round(time.time() - started, 1)
            run = RunDir(bundle.parent)
            record = run.read()
            calibration = run.enrolment_negatives(record)
            row["personalized"][str(seed)] = evaluate(bundle, target, subjects, split, test, unused or calibration)
            row.setdefault("calibration", record["calibration"])
        if seeds:
            row["personalized_mean"] = {k: float(np.mean([row["personalized"][str(sd)][k] for sd in seeds]))
                                        for k in METRICS}
            row["ap_change"] = row["personalized_mean"]["ap"] - row["pretrained"]["ap"]
        rows.append(row)
        pre = row["pretrained"]
        pers = row.get("personalized_mean")
        print(f"{target:18s} AP {pre['ap']:.3f}" + (f" -> {pers['ap']:.3f}" if pers else "") +
              f"   present bAcc {pre['present_bacc']:.3f}" + (f" -> {pers['present_bacc']:.3f}" if pers else "") +
              f"   pointing {pre['pointing']:.3f}" + (f" -> {pers['pointing']:.3f}" if pers else ""), flush=True)

        write_report(args, seeds, rows, complete=len(rows) == len(targets))

    print_tables(rows, summarize(rows, seeds), seeds)
    print(f"\nwrote {args.out / 'personalization.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
