"""What the generated-image filter keeps and drops, measured on real photos standing in for generations.

    python benchmarks/filter_threshold.py --data ../shared/data/dreambooth [--out runs/filter_threshold.json]

The filter (`server_side/synth/filtering.py`) keeps a generated positive if its located object crop
has a mean cosine >= threshold to the real object crops (paper: 0.6, 0.55 for animals, with
DreamSim features; ours come from the pretrained backbone). No DreamBooth output exists offline, so
for every DreamBooth subject with 4+ photos: references = its first 3 photos; "faithful
generations" = its other photos (the same object in new scenes: should be kept); "wrong identity"
= photos of the other subjects of the same category (look-alikes: should be dropped) and
"other category" = every other subject's photos. The table gives the share kept per group at
several thresholds.

Two scores are compared (`filtering.py`): the paper's global crop score and the patch score
(PatchDPO-style: the lower quartile of the located object's patch qualities). They live on
different scales, so they are compared at equal faithful-kept rates (each score's threshold set to
keep 90%, 80% and 70% of the faithful photos: the wrong identities it then keeps) and by ROC AUC
of faithful against each other group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_persrep.eval.bench import print_and_save  # noqa: E402
from edge_persrep.eval.datasets import load_dreambooth  # noqa: E402
from edge_persrep.runtime.images import load_image  # noqa: E402

THRESHOLDS = (0.4, 0.5, 0.55, 0.6, 0.7)
KEEP_FAITHFUL = (0.9, 0.8, 0.7)
GROUPS = ("faithful", "wrong identity", "other category")


def main(argv=None) -> int:
    from sklearn.metrics import roc_auc_score

    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.embedder import Embedder
    from edge_persrep.server_side.synth.filtering import filter_generated, score_key

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--out", type=Path, default=Path("runs/filter_threshold.json"))
    args = ap.parse_args(argv)
    subjects = load_dreambooth(args.data)
    embed = Embedder(create_backbone(args.backbone, pretrained=True))
    groups = {g: {"global": [], "patch": []} for g in GROUPS}
    for name, subject in subjects.items():
        if len(subject.photos) < 4:
            continue
        references = [load_image(p) for p in subject.photos[:3]]
        candidates = {"faithful": subject.photos[3:],
                      "wrong identity": [p for o in subjects.values()
                                         if o.name != name and o.category == subject.category for p in o.photos],
                      "other category": [p for o in subjects.values() if o.category != subject.category
                                         for p in o.photos[:1]]}
        for group, paths in candidates.items():
            if paths:
                result = filter_generated(embed, references, None, paths, 1.0)
                groups[group]["global"] += [result.scores[score_key(p)] for p in paths]
                groups[group]["patch"] += [result.patch_scores[score_key(p)] for p in paths]
        print(f"{name}: done", flush=True)
    report = {"backbone": args.backbone, "subjects": sum(len(s.photos) >= 4 for s in subjects.values())}
    for group in GROUPS:
        s = np.asarray(groups[group]["global"])
        report[f"{group}: images"] = len(s)
        report[f"{group}: median score"] = round(float(np.median(s)), 3)
        for t in THRESHOLDS:
            report[f"{group}: kept at {t}"] = round(float(np.mean(s >= t)), 3)
    for kind in ("global", "patch"):
        faithful = np.asarray(groups["faithful"][kind])
        for other in GROUPS[1:]:
            scores = np.concatenate([faithful, groups[other][kind]])
            labels = np.r_[np.ones(len(faithful)), np.zeros(len(groups[other][kind]))]
            report[f"{kind} score: ROC AUC faithful vs {other}"] = round(float(roc_auc_score(labels, scores)), 3)
        for rate in KEEP_FAITHFUL:
            cut = float(np.quantile(faithful, 1 - rate))  # keeps `rate` of the faithful photos
            for other in GROUPS[1:]:
                kept = float(np.mean(np.asarray(groups[other][kind]) >= cut))
                report[f"{kind} score, {rate:.0%} of faithful kept (cut {cut:.3f}): {other} kept"] = round(kept, 3)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
