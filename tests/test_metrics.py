"""The paper's metrics against hand-computed values, scikit-learn (AP, F1, ties included) and
pycocotools (COCO mAP)."""

import numpy as np
import pytest

from edge_persrep.runtime import metrics


def test_average_precision_by_hand():
    # ranking: P N P N -> precisions at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    assert metrics.average_precision([0.1, 0.9], [1, 0]) == pytest.approx(0.5)
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    # tied scores are one threshold (P 2/3 at R 1), not an order: N P P would give (1/2 + 2/3) / 2
    assert metrics.average_precision([0.5, 0.5, 0.5], [1, 1, 0]) == pytest.approx(2 / 3)
    assert metrics.average_precision([0.3] * 10, [1, 1, 1] + [0] * 7) == pytest.approx(0.3)  # constant: the share
    with pytest.raises(ValueError):
        metrics.average_precision([0.1], [0])


def test_average_precision_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.random(40)
        labels = rng.random(40) < 0.3
        labels[0] = True
        expected = sklearn.average_precision_score(labels, scores)
        assert metrics.average_precision(scores, labels) == pytest.approx(expected)
        tied = np.round(scores, 1)  # about 10 distinct scores for 40 images: many ties
        assert metrics.average_precision(tied, labels) == pytest.approx(sklearn.average_precision_score(labels, tied))
        p, r, _ = sklearn.precision_recall_curve(labels, tied)
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
        assert metrics.best_f1(tied, labels) == pytest.approx(f1.max())


def test_coco_map_matches_pycocotools():
    """Boxes and one detection per image (the paper's protocol), images without the object included:
    our mAP and mAP50 equal COCOeval's on random cases."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    for trial in range(5):
        n = 30
        gt, dets = {}, []
        for i in range(n):
            x, y, w, h = rng.uniform(0, 200, 2).tolist() + rng.uniform(20, 80, 2).tolist()
            if rng.random() < 0.6:
                gt[i] = (x, y, x + w, y + h)
            jitter = rng.normal(0, rng.choice([2, 10, 30]), 4)
            box = (x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3])
            if box[2] > box[0] + 1 and box[3] > box[1] + 1 and rng.random() < 0.9:
                dets.append((i, float(rng.random()), box))
        ours = metrics.coco_map(dets, gt)
        coco = COCO()
        coco.dataset = {"images": [{"id": i, "width": 400, "height": 400} for i in range(n)],
                        "categories": [{"id": 1, "name": "object"}],
                        "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                         "area": (b[2] - b[0]) * (b[3] - b[1])} for k, (i, b) in enumerate(gt.items())]}
        coco.createIndex()
        results = coco.loadRes([{"image_id": i, "category_id": 1, "score": sc,
                                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for i, sc, b in dets])
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert ours["map"] == pytest.approx(evaluator.stats[0], abs=1e-6), trial
        assert ours["map50"] == pytest.approx(evaluator.stats[1], abs=1e-6), trial


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


def test_detection_ap_by_hand():
    gt = {"a": (0, 0, 10, 10), "b": (0, 0, 10, 10)}
    # best detection correct, second (higher score than the miss) is a false positive in an
    # image without the object, third correct: P = 1, 1/2, 2/3 at recalls 0.5, 0.5, 1.0
    dets = [("a", 0.9, (0, 0, 10, 10)), ("n", 0.8, (0, 0, 5, 5)), ("b", 0.7, (1, 1, 10, 10))]
    # envelope: precision 1.0 for recall <= 0.5 (51 points), 2/3 for recall in (0.5, 1] (50 points)
    assert metrics.detection_ap(dets, gt, 0.5) == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    # at IoU 0.9 the second hit (IoU 0.81) no longer counts: recall stops at 0.5
    assert metrics.detection_ap(dets, gt, 0.9) == pytest.approx(51 / 101)
    assert metrics.detection_ap([("a", 0.5, None)], gt, 0.5) == 0.0


def test_coco_map_perfect_and_masks():
    gt = {"a": (0, 0, 10, 10)}
    assert metrics.coco_map([("a", 1.0, (0, 0, 10, 10))], gt) == {"map": 1.0, "map50": 1.0}
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    half = np.zeros((4, 4), bool)
    half[:2, :1] = True
    assert metrics.mask_iou(m, half) == pytest.approx(0.5)
    result = metrics.coco_map([("a", 1.0, half)], {"a": m}, iou=metrics.mask_iou)
    assert result["map50"] == 1.0 and result["map"] == pytest.approx(0.1)  # only the 0.50 threshold passes


def test_best_f1_and_pr_curve():
    # cuts: top-1 P 1 R .5 (F1 .667), top-2 P .5 R .5 (.5), all P 2/3 R 1 (.8)
    assert metrics.best_f1([0.9, 0.8, 0.1], [1, 0, 1]) == pytest.approx(0.8)
    precision, recall = metrics.precision_recall_curve([0.9, 0.8, 0.1], [1, 0, 1])
    assert precision.tolist() == pytest.approx([1, 0.5, 2 / 3]) and recall.tolist() == pytest.approx([0.5, 0.5, 1])


def test_best_balanced_accuracy_by_hand_and_against_sklearn():
    # + at 0.9 and 0.7, - at 0.8 and 0.1: the cut 0.7 keeps both positives and one negative (0.75),
    # the cut 0.9 one positive and no negative (0.75); no cut separates them
    assert metrics.best_balanced_accuracy([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert metrics.best_balanced_accuracy([0.9, 0.7, 0.2], [1, 1, 0]) == 1.0
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 12, 20) / 12  # ties on purpose
        labels = rng.random(20) < 0.3
        labels[:2] = [True, False]
        cuts, balanced = metrics.balanced_accuracy_by_cut(scores[labels], scores[~labels])
        expected = [sklearn_metrics.balanced_accuracy_score(labels, scores >= t) for t in cuts]
        assert np.allclose(balanced, expected)
        assert metrics.best_balanced_accuracy(scores, labels) == pytest.approx(max(expected))
