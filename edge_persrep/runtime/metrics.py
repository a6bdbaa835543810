"""The paper's metrics as pure functions (numpy only): the evaluation's, the int8 gate's and the
benchmarks'. They live in the runtime, the bottom layer, so every layer above may use them."""

from __future__ import annotations

import numpy as np


def average_precision(scores, labels) -> float:
    """Non-interpolated AP, scikit-learn's `average_precision_score`: sum over the distinct score
    thresholds of (recall gain) x (precision at that threshold). Tied scores form one threshold, so
    no order among them is assumed (hand-written: the runtime does not ship scikit-learn)."""
    precision, recall = precision_recall_curve(scores, labels)
    if np.asarray(labels, bool).sum() == 0:
        raise ValueError("average_precision needs at least one positive")
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def top_k_accuracy(ranked_correct: np.ndarray, k: int) -> float:
    """ranked_correct [Q, G] bool, each row a query's gallery in ranked order: share with a hit in top k."""
    return float(np.asarray(ranked_correct, bool)[:, :k].any(axis=1).mean())


def mean_reciprocal_rank(ranked_correct: np.ndarray) -> float:
    ranked_correct = np.asarray(ranked_correct, bool)
    first = np.argmax(ranked_correct, axis=1)
    rr = np.where(ranked_correct.any(axis=1), 1.0 / (first + 1), 0.0)
    return float(rr.mean())


def ndcg(ranked_correct: np.ndarray) -> float:
    """Binary-relevance NDCG over the whole ranking, averaged over queries."""
    ranked_correct = np.asarray(ranked_correct, float)
    discounts = 1.0 / np.log2(np.arange(2, ranked_correct.shape[1] + 2))
    dcg = (ranked_correct * discounts).sum(axis=1)
    ideal = np.array([discounts[: int(n)].sum() for n in ranked_correct.sum(axis=1)])
    return float(np.mean(np.where(ideal > 0, dcg / np.maximum(ideal, 1e-12), 0.0)))


def box_iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw, ih = max(0, min(ax1, bx1) - max(ax0, bx0)), max(0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 else 0.0


def point_in_box(point, box) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return bool(x0 <= x < x1 and y0 <= y < y1)


COCO_IOUS = np.linspace(0.5, 0.95, 10)


def mask_iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def detection_ap(detections, ground_truth, iou_threshold: float, iou=box_iou) -> float:
    """COCO-style AP for one object at one IoU threshold, one ground truth per image at most.

    detections: [(image_id, score, region)], at most one per image (the paper's protocol: the
    object's best region in each test image); region = box or mask, or None for no detection.
    ground_truth: {image_id: region} for the images that show the object. Detections in other
    images are false positives. Precision is made monotone and sampled at 101 recall points.
    """
    if not ground_truth:
        raise ValueError("detection_ap needs at least one ground-truth instance")
    dets = sorted((d for d in detections if d[2] is not None), key=lambda d: -d[1])
    hits = np.array([d[0] in ground_truth and iou(d[2], ground_truth[d[0]]) >= iou_threshold for d in dets], bool)
    if len(hits) == 0:
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / len(ground_truth)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def coco_map(detections, ground_truth, iou=box_iou) -> dict:
    """mAP over IoU 0.50:0.95 and AP at 0.50 (COCO's two headline numbers)."""
    aps = [detection_ap(detections, ground_truth, t, iou) for t in COCO_IOUS]
    return {"map": float(np.mean(aps)), "map50": aps[0]}


def best_f1(scores, labels) -> float:
    """The best F1 over all thresholds of a score list (classification)."""
    precision, recall = precision_recall_curve(scores, labels)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(f1.max()) if len(f1) else 0.0


def balanced_accuracy_by_cut(positives, negatives) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct score as a cut (present if score >= cut): the cuts, ascending, and the balanced
    accuracy (true-positive rate + true-negative rate) / 2 at each."""
    pos, neg = np.asarray(positives, float), np.asarray(negatives, float)
    cuts = np.unique(np.concatenate([pos, neg]))
    tpr = (len(pos) - np.searchsorted(np.sort(pos), cuts, side="left")) / max(len(pos), 1)
    tnr = np.searchsorted(np.sort(neg), cuts, side="left") / max(len(neg), 1)
    return cuts, (tpr + tnr) / 2


def best_balanced_accuracy(scores, labels) -> float:
    """The best balanced accuracy any threshold reaches on these scores: an upper bound for a
    calibrated threshold, to tell a threshold's error from the ranking's."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    _, balanced = balanced_accuracy_by_cut(scores[labels], scores[~labels])
    return float(balanced.max()) if len(balanced) else 0.0


def precision_recall_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score, high to low: a threshold keeps every image
    scoring at least it, so tied scores enter together (as in scikit-learn)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order])
    last = np.r_[np.nonzero(np.diff(scores[order]))[0], len(order) - 1] if len(order) else np.zeros(0, int)
    return tp[last] / (last + 1), tp[last] / max(labels.sum(), 1)
