"""A user's several things: one joint model for the group against one model per object.

For each group of one category (default: three dogs, the two cats, the two sneakers, three toys)
the identity-disjoint protocol of benchmarks/personalization.py is applied to the group
(eval/protocols.group_split): the subjects outside the group are split into *seen* (the training
and calibration negatives) and *unseen* (the only distractors in the test). Every member is a
target: the test (disjoint_test_set) holds each member's held-out photos, crops, occlusions, small
and in 2x2 / 3x3 scenes among unseen look-alikes, and the unseen subjects' own. A member's photos are
test images for the other members too: that is where confusion between the user's own things shows.

Three systems, each enrolling every member from its first 3 photos with the seen negatives:
    pretrained   Lite0, one bundle, the members enrolled together (Finder.enroll_all)
    per-object   one `personalize` run per member (what a user did before joint runs): N bundles,
                 each answering for its own member, N model runs per frame
    joint        one `personalize --object A=... --object B=...` run: one bundle, one model run
The two systems with one bundle for the group are also scored with each member's `present` at its
own threshold alone ("..., thresholds alone": Finder.one_per_place off), to show what the runtime's
rule that one place in a frame is at most one of the user's look-alikes (finder.one_claim_per_place)
changes; the per-object bundles hold one member each, so the rule never applies to them.

Reported per member and system: eval/target_metrics (present bAcc / F1 at the calibrated threshold,
AP, pointing, box IoU, retrieval top-1 among the members and unseen subjects), and
    confused_with   on images showing only another member B (photo, crop, occlusion): the share
                    where this member is judged present
per group and system: `correct_id` (images showing exactly one member, alone: that member and no
other is present), `none_rejected` (images showing no member: no member present), and the
training time (the joint run against the sum of the per-object runs).

    python benchmarks/joint.py --data ../shared/data/dreambooth --out runs/bench-joint
    python benchmarks/joint.py ... --groups cats=cat,cat2 --seeds 0 --steps 20      (small, fast)
    python benchmarks/joint.py ... --joint-only      (no per-object runs: pretrained and the joint model)
Prints tables and writes OUT/joint.json after every group. Runs resume (one run directory per
member or group and seed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.protocols import (
    SINGLE_KINDS,
    disjoint_test_set,
    group_split,
    reference_folder,
    seen_negatives,
)
from edge_persrep.eval.target_metrics import retrieval_gallery, target_metrics
from edge_persrep.eval.training_options import add_training_options, resolve_training_options
from edge_persrep.pipeline import PersonalizeRequest, RunDir, export_pretrained, personalize
from edge_persrep.pipeline.joint import JointObject, JointRequest, personalize_joint
from edge_persrep.runtime import Finder
from edge_persrep.runtime.files import atomic_write_json
from edge_persrep.server_side.contrastive import get_preset

GROUPS = {"dogs": ("dog", "dog2", "dog3"), "cats": ("cat", "cat2"),
          "sneakers": ("colorful_sneaker", "shiny_sneaker"), "toys": ("duck_toy", "monster_toy", "robot_toy")}
METRICS = ("ap", "present_bacc", "present_f1", "pointing", "box_iou", "retrieval_top1", "confused_with_max")
SYSTEMS = ("pretrained", "per-object", "joint")
DIAGNOSTICS = ("pretrained, thresholds alone", "joint, thresholds alone")  # Finder.one_per_place off


def score_system(finders: dict[str, Finder], members, subjects, split, test, one_per_place: bool = True,
                 embedded: dict | None = None) -> dict:
    """Every member's metrics and the group's decisions. `finders`: member -> the Finder answering
    for it (one shared Finder for pretrained / joint, each member's own for per-object).
    `one_per_place`: Finder.one_per_place (False: each member's `present` at its own threshold
    alone); `embedded` keeps each finder's features of the test, to score it again without a model run."""
    feats_of, matches_of = {}, {}
    embedded = {} if embedded is None else embedded
    for finder in {id(f): f for f in finders.values()}.values():
        if id(finder) not in embedded:
            embedded[id(finder)] = finder.embed([t.image for t in test])  # one model run per image and finder
        feats = embedded[id(finder)]
        names = [m for m in members if finders[m] is finder]
        for m in names:
            feats_of[m] = feats
        kept, finder.one_per_place = finder.one_per_place, one_per_place
        try:
            for f in feats:
                for match in finder.classify(f, names):
                    matches_of.setdefault(match.name, []).append(match)
        finally:
            finder.one_per_place = kept  # the caller's Finder is left as it was given
    photos_of = {n: subjects[n].photos[:3] for n in tuple(members) + split.unseen}
    shows_only = {m: [k for k, t in enumerate(test) if t.subjects == {m} and t.kind in SINGLE_KINDS] for m in members}
    rows = {}
    for m in members:
        gallery, owner = retrieval_gallery(finders[m], photos_of)
        row = target_metrics(finders[m], m, test, feats_of[m], matches_of[m], gallery, owner)
        row["confused_with"] = {other: float(np.mean([matches_of[m][k].present for k in shows_only[other]]))
                                for other in members if other != m}
        row["confused_with_max"] = max(row["confused_with"].values())
        rows[m] = row
    present = np.array([[matches_of[m][k].present for m in members] for k in range(len(test))])  # [images, members]
    alone = [k for k, t in enumerate(test) if t.kind in SINGLE_KINDS and len(t.subjects & set(members)) == 1]
    shown = [[m in test[k].subjects for m in members] for k in alone]
    none = [k for k, t in enumerate(test) if not t.subjects & set(members)]
    return {"members": rows,
            "correct_id": float(np.mean([(present[k] == s).all() for k, s in zip(alone, shown)])),
            "none_rejected": float(np.mean([not present[k].any() for k in none])),
            "n_alone": len(alone), "n_none": len(none)}


def pretrained_bundle(pretrained: Path, folder: Path, members, subjects, negatives: list[Path]) -> Finder:
    """A copy of the pretrained bundle with the members enrolled together (Finder.enroll_all) from
    their first 3 photos (kept, so a rerun reuses it)."""
    if not folder.is_dir():
        shutil.copytree(pretrained, folder)
    finder = Finder.open(folder)
    if set(finder.store.objects) != set(members):
        finder.enroll_all([(m, subjects[m].photos[:3], subjects[m].category, negatives) for m in members])
    return finder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the DreamBooth dataset folder")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-joint"))
    ap.add_argument("--groups", help="NAME=A,B[,C];NAME2=... (default: dogs, cats, sneakers, toys)")
    add_training_options(ap)
    ap.add_argument("--seeds", default="1", help="training seeds")
    ap.add_argument("--joint-only", action="store_true",
                    help="train and score no per-object models (pretrained and joint only)")
    ap.add_argument("--joint-steps", choices=["preset", "per-object"], default="preset",
                    help="a joint run's training steps: the preset's (as one object's run), or that times the "
                         "number of objects (each object gets as many anchor rows as in its own run)")
    args = ap.parse_args(argv)
    tag = "-" + resolve_training_options(args)  # other settings, other runs

    subjects = load_dreambooth(args.data)
    groups = (dict((g.split("=")[0], tuple(g.split("=")[1].split(","))) for g in args.groups.split(";"))
              if args.groups else GROUPS)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.out / "pretrained"
    if not (pretrained / "bundle.json").is_file():
        export_pretrained("efficientnet_lite0", pretrained, force=True)
    report = {"protocol": "identity-disjoint, per group", "preset": args.preset, "synth": args.synth,
              "steps": args.steps, "joint_steps": args.joint_steps, "train_precision": args.train_precision,
              "seeds": seeds, "groups": {}}
    for group, members in groups.items():
        split = group_split(subjects, group, members)
        test = disjoint_test_set(subjects, split)
        negatives = seen_negatives(subjects, split, args.out / "negatives" / group)
        seen = sorted(negatives.iterdir())
        entry = {"members": list(members), "seen": list(split.seen), "unseen": list(split.unseen),
                 "note": split.note, "n_test": len(test), "seeds": {}}
        base = pretrained_bundle(pretrained, args.out / "runs" / group / "pretrained", members, subjects, seen)
        embedded = {}
        entry["pretrained"] = score_system(dict.fromkeys(members, base), members, subjects, split, test,
                                           embedded=embedded)
        entry["pretrained, thresholds alone"] = score_system(dict.fromkeys(members, base), members, subjects, split,
                                                             test, one_per_place=False, embedded=embedded)
        for seed in seeds:
            runs, seconds = {}, {}
            for m in () if args.joint_only else members:
                bundle = personalize(PersonalizeRequest(
                    subjects[m].photos[:3], m, subjects[m].category, args.out / "runs" / group / f"{m}-seed{seed}{tag}",
                    negatives=[negatives], synth_method=args.synth, preset=args.preset, steps=args.steps, seed=seed,
                    device="cpu", train_precision=args.train_precision))
                seconds[m] = RunDir(bundle.parent).recorded_seconds()  # resumed: what the run cost when made
                runs[m] = Finder.open(bundle)
            steps = (args.steps or get_preset(args.preset).steps) * len(members) \
                if args.joint_steps == "per-object" else args.steps
            suffix = "" if args.joint_steps == "preset" else f"-{args.joint_steps}-steps"
            joint_bundle = personalize_joint(JointRequest(
                [JointObject(m, reference_folder(subjects, m, args.out / "references" / m), subjects[m].category)
                 for m in members], args.out / "runs" / group / f"joint{suffix}-seed{seed}{tag}",
                negatives=[negatives], synth_method=args.synth, preset=args.preset, steps=steps, seed=seed,
                device="cpu", train_precision=args.train_precision))
            joint_record = json.loads((joint_bundle.parent / "joint.json").read_text())
            joint_seconds = joint_record["seconds"]  # the generation's time, as recorded when it was made
            per_object_training = [RunDir(runs[m].bundle.root.parent).training_summary() or {} for m in runs]
            joint = Finder.open(joint_bundle)
            embedded = {}
            entry["seeds"][str(seed)] = {
                "joint": score_system(dict.fromkeys(members, joint), members, subjects, split, test, embedded=embedded),
                "joint, thresholds alone": score_system(dict.fromkeys(members, joint), members, subjects, split, test,
                                                        one_per_place=False, embedded=embedded),
                "seconds": {"per-object": seconds, "joint": joint_seconds,
                            "per-object_training": [t.get("seconds") for t in per_object_training],
                            "joint_training": joint_record["training"].get("seconds")}}
            if runs:
                entry["seeds"][str(seed)]["per-object"] = score_system(runs, members, subjects, split, test)
        report["groups"][group] = entry
        atomic_write_json(args.out / "joint.json", report)
        print_group(group, entry, seeds)
    print(f"\nwrote {args.out / 'joint.json'}")
    return 0


def print_group(group: str, entry: dict, seeds: list[int]) -> None:
    print(f"\n## {group}: {', '.join(entry['members'])} (seen {len(entry['seen'])}, unseen {len(entry['unseen'])}, "
          f"{entry['n_test']} test images) {entry['note']}")
    print("| member | system | " + " | ".join(METRICS) + " |")
    print("|" + "---|" * (len(METRICS) + 2))
    for m in entry["members"]:
        for name in SYSTEMS + DIAGNOSTICS:
            results = system_results(entry, name, seeds)
            if results:
                cells = [f"{np.mean([r['members'][m][k] for r in results]):.3f}" for k in METRICS]
                print(f"| {m} | {name} | " + " | ".join(cells) + " |")
    for name in SYSTEMS + DIAGNOSTICS:
        results = system_results(entry, name, seeds)
        if results:
            print(f"{name}: correct_id {np.mean([r['correct_id'] for r in results]):.3f}, "
                  f"none_rejected {np.mean([r['none_rejected'] for r in results]):.3f}")
    for sd in seeds:
        s = entry["seeds"][str(sd)]["seconds"]
        per_object = f"per-object runs {sum(s['per-object'].values()):.0f} s in all, " if s["per-object"] else ""
        print(f"seed {sd}: {per_object}joint run {s['joint']:.0f} s")


def system_results(entry: dict, name: str, seeds: list[int]) -> list[dict]:
    """A system's scores in a group's entry: the pretrained ones once, the trained ones per seed."""
    if name.startswith("pretrained"):
        return [entry[name]] if name in entry else []
    return [entry["seeds"][str(sd)][name] for sd in seeds if name in entry["seeds"][str(sd)]]


if __name__ == "__main__":
    sys.exit(main())
