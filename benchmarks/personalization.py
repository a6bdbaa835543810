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
    ... --split validation   distractors and gallery from the *seen* identities (new photos of
                             them): for choosing a rule without looking at the unseen ones
    ... --split validation-disjoint   the seen identities halved again (protocols.validation_split):
                             training sees one half, the distractors and gallery are the other,
                             so the validation's look-alikes are new to the model, as the test's
                             are (`validation` shows identities the model trained against, which
                             favours low thresholds and pasting onto negatives); its models train
                             against fewer look-alikes than the test's
    ... --synth context --backgrounds other-categories   paste the target onto the seen
                             other-category photos only (default: onto every training negative)
    ... --positives 192      another number of synthetic positives than the preset's
    ... --scoring region     enrol both models with another rule than the runtime's "mean"
                             (store.SCORING_RULES; "region": the best reference, before 2026-12-05)
Prints tables and writes OUT/personalization.json. Personalized runs resume (one run directory per
target and seed); `--seeds ''` evaluates the pretrained model only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.protocols import (
    PROTOCOL_SEED,
    disjoint_test_set,
    identity_split,
    lookalike_targets,
    other_category_backgrounds,
    seen_negatives,
    validation_split,
)
from edge_persrep.eval.target_metrics import present_metrics, retrieval_gallery, target_metrics
from edge_persrep.eval.training_options import add_training_options, resolve_training_options
from edge_persrep.pipeline import PersonalizeRequest, RunDir, export_pretrained, personalize
from edge_persrep.runtime import Bundle, Finder, PrototypeStore
from edge_persrep.runtime.files import atomic_write_json
from edge_persrep.runtime.store import SCORING_RULES

METRICS = ("present_bacc", "present_f1", "present_bacc_best", "ap", "ap_global", "present_bacc_global", "pointing",
           "box_iou", "retrieval_top1")


def evaluate(bundle_dir: Path, target: str, subjects, split, test, calibration_negatives: list[Path],
             scoring: str = "mean") -> dict:
    """`calibration_negatives`: what enrolment calibrates on (the pretrained model: every seen
    negative, as a user would; a personalized run: what its enrolment used, `--calibrate-on`).
    `scoring`: the rule enrolment uses (runtime.store.SCORING_RULES)."""
    bundle = Bundle.load(bundle_dir)
    finder = Finder(bundle, PrototypeStore(bundle.model_sha256, bundle.layout.embedding_dim, bundle.layout.grid_dim))
    s = subjects[target]
    calibration = {}
    scores_of = finder._calibration_scores

    def recorded(*args):  # diagnostic: the scores enrolment calibrated on, saved in the report
        calibration["positives"], calibration["negatives"] = scores_of(*args)
        return calibration["positives"], calibration["negatives"]

    finder._calibration_scores = recorded
    finder.store.add(finder.make_prototype(target, s.photos[:3], s.category, negatives=calibration_negatives,
                                           scoring=scoring))
    del finder._calibration_scores
    paper = finder.make_prototype(target, s.photos[:3], s.category, negatives=calibration_negatives, scoring="global")
    feats = finder.embed([t.image for t in test])
    matches = [finder.classify(f)[0] for f in feats]
    gallery, owner = retrieval_gallery(finder, {n: subjects[n].photos[:3] for n in (target,) + split.unseen})
    row = target_metrics(finder, target, test, feats, matches, gallery, owner)
    row["present_bacc_global"], _ = present_metrics([m.global_score >= paper.threshold for m in matches],
                                                    row["scores"]["labels"])
    row["threshold_global"] = round(paper.threshold, 4)
    row["scores"].update({"calibration_positives": [round(x, 4) for x in calibration["positives"]],
                          "calibration_negatives": [round(x, 4) for x in calibration["negatives"]]})
    return row


def unused_photos(subjects, split, target: str) -> list[Path]:
    """The seen subjects' photos that `seen_negatives` leaves out (same category: past the 3rd;
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
    report = {"protocol": {"name": "identity-disjoint", "seed": PROTOCOL_SEED, "refs_per_target": 3,
                           "split": args.split},
              "scoring": args.scoring,
              "calibrate_on": args.calibrate_on, "enrol_on": args.enrol_on, "synth": args.synth,
              "backgrounds": args.backgrounds, "preset": args.preset,
              "train_precision": args.train_precision,
              "steps": args.steps, "positives": args.positives, "seeds": seeds, "complete": complete,
              "targets": rows, "mean": summarize(rows, seeds)}
    atomic_write_json(args.out / "personalization.json", report)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the DreamBooth dataset folder")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-personalization"))
    ap.add_argument("--targets", help="comma-separated subjects (default: every one with a same-category look-alike)")
    add_training_options(ap)  # runs go to OUT/runs/SYNTH-PRECISION-NSTEPS
    ap.add_argument("--positives", type=int, help="override the preset's number of synthetic positives")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds of the personalized model ('' = pretrained only)")
    ap.add_argument("--calibrate-on", default="training", help="personalize --calibrate-on: training | held-out")
    ap.add_argument("--split", default="test", choices=["test", "validation", "validation-disjoint"],
                    help="test: distractors and gallery are the unseen identities; validation: the seen ones; "
                         "validation-disjoint: the seen ones halved again, half to train, half to show")
    ap.add_argument("--scoring", choices=SCORING_RULES, default="mean", help="enrolment's scoring rule, both models")
    ap.add_argument("--enrol-on", default="run", choices=["run", "unused-photos"],
                    help="what both models' enrolment calibrates on: the run's own choice (the negatives folder, "
                         "or --calibrate-on's held-out part), or the seen identities' photos training did not use")
    ap.add_argument("--backgrounds", default="negatives", choices=["negatives", "other-categories"],
                    help="what cutpaste / context paste onto: every training negative (personalize's default), "
                         "or the seen negatives of other categories only (no look-alike under a pasted positive)")
    args = ap.parse_args(argv)
    suffix = "-validation-disjoint" if args.split == "validation-disjoint" else ""  # other negatives: other runs
    runs_folder = resolve_training_options(args) + suffix

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
        split = (validation_split if args.split == "validation-disjoint" else identity_split)(subjects, target)
        shown = dataclasses.replace(split, unseen=split.seen) if args.split == "validation" else split
        test = disjoint_test_set(subjects, shown)
        negatives = seen_negatives(subjects, split, args.out / f"negatives{suffix}" / target)
        seen_photos = sorted(negatives.iterdir())
        backgrounds = (other_category_backgrounds(subjects, split, args.out / f"backgrounds{suffix}" / target)
                       if args.backgrounds == "other-categories" else None)
        unused = unused_photos(subjects, split, target) if args.enrol_on == "unused-photos" else None
        row = {"target": target, "category": s.category, "seen": len(split.seen), "unseen": len(split.unseen),
               "note": split.note,
               "pretrained": evaluate(pretrained, target, subjects, shown, test, unused or seen_photos, args.scoring),
               "personalized": {}, "personalize_seconds": {}}
        for seed in seeds:
            bundle = personalize(PersonalizeRequest(
                s.photos[:3], target, s.category, args.out / "runs" / runs_folder / f"{target}-seed{seed}",
                negatives=[negatives], backgrounds=backgrounds, synth_method=args.synth, preset=args.preset,
                steps=args.steps, positives=args.positives, seed=seed,
                device="cpu", calibrate_on=args.calibrate_on, train_precision=args.train_precision))
            run = RunDir(bundle.parent)
            row["personalize_seconds"][str(seed)] = run.recorded_seconds()  # a resumed run: what it cost then
            record = run.read()
            calibration = run.enrolment_negatives(record)
            row["personalized"][str(seed)] = evaluate(bundle, target, subjects, shown, test, unused or calibration,
                                                      args.scoring)
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
