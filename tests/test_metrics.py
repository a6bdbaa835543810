"""The paper's metrics against hand-computed values (and scikit-learn where it applies)."""

import numpy as np
import pytest

from edge_persrep.eval import metrics


def test_average_precision_by_hand():
    # ranking: P N P N -> precisions at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert metrics.average_precision([0.1, 0.9], [1, 0]) == pytest.approx(0.5)
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # ties never flatter
    with pytest.raises(ValueError):
        metrics.average_precision([0.1], [0])


def test_average_precision_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.random(40)
        labels = rng.random(40) < 0.3
        labels[0] = True
        assert metrics.average_precision(scores, labels) == pytest.approx(sklearn.average_precision_score(labels, scores))


def test_retrieval_metrics_by_hand():
    ranked = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    assert metrics.top_k_accuracy(ranked, 1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(ranked, 2) == pytest.approx(2 / 3)
    assert metrics.mean_reciprocal_rank(ranked) == pytest.approx((0.5 + 1 + 0) / 3)
    # one relevant item at rank 2 -> DCG = 1/log2(3), ideal = 1
    assert metrics.ndcg(ranked[:1]) == pytest.approx(1 / np.log2(3))


def test_box_iou_and_pointing():
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert metrics.point_in_box((5, 5), (0, 0, 10, 10)) and not metrics.point_in_box((10, 5), (0, 0, 10, 10))
