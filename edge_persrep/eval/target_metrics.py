"""What a user sees for one enrolled object on an identity-disjoint test set (eval/protocols.py):
the `present` decision at its calibrated threshold, the ranking, where the object was found, and
retrieval. Shared by benchmarks/personalization.py (one object a model) and benchmarks/joint.py
(a user's group of objects in one model).

    present_bacc / present_f1   the `present` decision: balanced accuracy and F1 over the test images
    present_bacc_best           the best balanced accuracy any threshold reaches on this test (a
                                diagnostic, never used to choose anything)
    ap / ap_global              classification AP of the runtime's score (global + region) and of
                                the paper's global score alone
    pointing                    scenes where the best region window's centre lies in the object's cell
                                (`pointing_hits`: per such scene, in test order, for paired comparisons)
    box_iou                     mean IoU of `find`'s box with the object's cell, on small / scene images
    retrieval_top1              single-subject images of the object: is the nearest gallery photo its own?
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..runtime.finder import Finder, ImageFeatures, Match
from ..runtime.metrics import average_precision, best_balanced_accuracy, box_iou, point_in_box
from .protocols import SINGLE_KINDS, TestImage

LOCATED_KINDS = ("small", "scene2x2", "scene3x3")  # where the object's place is known and not the whole frame


def present_metrics(present: Sequence[bool], labels: Sequence[bool]) -> tuple[float, float]:
    """Balanced accuracy and F1 of yes/no decisions (both 0 for F1 when nothing is found)."""
    p, y = np.asarray(present, bool), np.asarray(labels, bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    tpr = tp / max(1, y.sum())
    tnr = float((~p & ~y).sum()) / max(1, (~y).sum())
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return (tpr + tnr) / 2, f1


def target_metrics(finder: Finder, name: str, test: Sequence[TestImage], feats: Sequence[ImageFeatures],
                   matches: Sequence[Match], gallery: np.ndarray, gallery_owner: np.ndarray) -> dict:
    """One object's metrics; `matches`: its Match on each test image (Finder.classify), `gallery`:
    unit embeddings [N, D] of the retrieval gallery with each row's subject in `gallery_owner`."""
    labels = [name in t.subjects for t in test]
    bacc, f1 = present_metrics([m.present for m in matches], labels)
    top1, pointing, ious = [], [], []
    for t, f, m in zip(test, feats, matches):
        if name not in t.subjects:
            continue
        if t.kind in SINGLE_KINDS:
            top1.append(gallery_owner[int(np.argmax(gallery @ f.embedding))] == name)
        if t.kind in LOCATED_KINDS:
            x0, y0, x1, y1 = m.region_box
            pointing.append(point_in_box(((x0 + x1) / 2, (y0 + y1) / 2), t.boxes[name]))
            located = finder.locate(f, m, with_mask=False)
            ious.append(box_iou(located.box, t.boxes[name]) if located.box is not None else 0.0)
    return {"present_bacc": bacc, "present_f1": f1,
            "present_bacc_best": best_balanced_accuracy([m.score for m in matches], labels),
            "ap": average_precision([m.score for m in matches], labels),
            "ap_global": average_precision([m.global_score for m in matches], labels),
            "pointing": float(np.mean(pointing)), "pointing_hits": [int(h) for h in pointing],
            "box_iou": float(np.mean(ious)),
            "retrieval_top1": float(np.mean(top1)), "threshold": round(finder.store.objects[name].threshold, 4),
            "n_pos": int(sum(labels)), "n_test": len(test),
            "scores": {"test": [round(m.score, 4) for m in matches], "labels": labels,
                       "present": [int(m.present) for m in matches], "kinds": [t.kind for t in test]}}


def retrieval_gallery(finder: Finder, photos_of: dict[str, Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] of every subject's gallery photos, and each row's subject."""
    feats = finder.embed([p for photos in photos_of.values() for p in photos])
    owner = np.array([n for n, photos in photos_of.items() for _ in photos])
    return np.stack([f.embedding for f in feats]), owner
