"""The paper's metrics as pure functions (numpy only)."""

from __future__ import annotations

import numpy as np


def average_precision(scores, labels) -> float:
    """Non-interpolated AP (scikit-learn's definition): sum over positives of precision at their rank,
    / number of positives. Ties are broken pessimistically (negatives first) so AP never flatters."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if labels.sum() == 0:
        raise ValueError("average_precision needs at least one positive")
    order = np.lexsort((labels, -scores))  # by score desc, negatives before positives on ties
    hits = labels[order]
    precision_at_hit = np.cumsum(hits)[hits] / (np.nonzero(hits)[0] + 1)
    return float(precision_at_hit.mean())


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
