"""Dense-map maths on hand-checkable inputs."""

import numpy as np
import pytest

from edge_persrep.runtime import dense


def test_otsu_splits_two_clusters():
    values = np.array([0.1, 0.12, 0.11, 0.09, 0.8, 0.82, 0.79])
    t = dense.otsu_threshold(values)
    assert 0.12 <= t < 0.79
    assert dense.otsu_threshold(np.full(5, 0.3)) == pytest.approx(0.3)


def test_morphology_on_hand_made_mask():
    m = np.zeros((7, 7), bool)
    m[2:5, 2:5] = True
    assert dense.erode(m).sum() == 1 and dense.erode(m)[3, 3]
    assert dense.dilate(m).sum() == 25
    speck = m.copy()
    speck[0, 6] = True  # an isolated pixel is removed by opening, the square survives
    cleaned = dense.clean_mask(speck)
    assert not cleaned[0, 6] and cleaned[2:5, 2:5].all()


def test_components_and_largest():
    m = np.zeros((5, 6), bool)
    m[0, 0:2] = True  # area 2
    m[2:5, 3:6] = True  # area 9
    m[4, 0] = True  # area 1
    labels, n = dense.connected_components(m)
    assert n == 3
    big = dense.largest_component(m)
    assert big.sum() == 9 and big[2:5, 3:6].all()
    assert not dense.largest_component(m, min_area=10).any()
    diagonal = np.eye(3, dtype=bool)  # 4-connectivity: diagonal pixels are separate blobs
    assert dense.connected_components(diagonal)[1] == 3


def test_anchor_picks_the_blob_it_overlaps_not_the_largest():
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True  # area 4: where the object was recognised
    m[2:6, 4:8] = True  # area 16: a bigger look-alike
    anchor = np.zeros_like(m)
    anchor[0:3, 0:3] = True
    assert dense.largest_component(m, anchor=anchor)[0:2, 0:2].all()
    assert dense.largest_component(m, anchor=anchor).sum() == 4
    assert dense.largest_component(m, anchor=np.zeros_like(m)).sum() == 16  # overlaps none: the largest
    assert not dense.largest_component(m, min_area=5, anchor=anchor)[0:2, 0:2].any()  # too small: not kept


def test_localize_with_an_anchor_boxes_the_recognised_object():
    sim = np.zeros((10, 10), np.float32)
    sim[1:3, 1:3] = 1.0  # the object, small (grid cell = 32 px of a 320 px photo)
    sim[4:9, 4:9] = 0.9  # a look-alike, larger
    assert dense.localize(sim, 320, 320)[1][0] > 100  # without an anchor: the look-alike
    x0, y0, x1, y1 = dense.localize(sim, 320, 320, anchor=(32, 32, 96, 96))[1]
    assert x1 < 120 and y1 < 120


def test_object_window_is_the_largest_near_best_window_around_the_best():
    cells = np.array([[2, 2, 4, 4],    # the best: a part of the object
                      [1, 1, 5, 5],    # the whole object: within the slack, contains the centre
                      [0, 0, 8, 8],    # object + look-alike: scores lower than the slack allows
                      [5, 5, 9, 9]])   # elsewhere, as large, near-best: does not contain the centre
    scores = np.array([0.80, 0.79, 0.70, 0.795])
    assert dense.object_window(scores, cells, slack=0.02).tolist() == [1, 1, 5, 5]
    assert dense.object_window(scores, cells, slack=0.0).tolist() == [2, 2, 4, 4]
    assert dense.object_window(scores, cells, slack=0.2).tolist() == [0, 0, 8, 8]
    two = np.array([[2, 2, 4, 4], [1, 1, 5, 5], [3, 3, 7, 7]])  # equally large around the best: their mean box
    assert dense.object_window(np.array([0.8, 0.79, 0.79]), two, slack=0.02).tolist() == [2, 2, 6, 6]


def test_mask_box_is_exclusive_extent():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert dense.mask_box(m) == (3, 2, 8, 5)
    assert dense.mask_box(np.zeros((3, 3), bool)) is None


def test_target_feature_is_mean_plus_max_over_two():
    patches = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = np.array([(2 / 3 + 1) / 2, (2 / 3 + 1) / 2])
    assert np.allclose(dense.target_feature(patches), expected / np.linalg.norm(expected))


def test_similarity_map_takes_best_target():
    grid = dense.l2_normalize(np.array([[[1.0, 0.0], [0.0, 1.0]]]))
    targets = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert np.allclose(dense.similarity_map(grid, targets), [[1.0, 0.8]])


def test_localize_recovers_a_blob_box():
    sim = np.zeros((10, 10), np.float32)
    sim[2:6, 4:9] = 1.0  # object covers grid rows 2-5, cols 4-8
    mask, box = dense.localize(sim, width=200, height=100)
    assert mask.shape == (100, 200)
    x0, y0, x1, y1 = box
    # grid cell = 20 x 10 px: expected extent about x 80-180, y 20-60 (bilinear blurs half a cell)
    assert abs(x0 - 80) <= 12 and abs(x1 - 180) <= 12 and abs(y0 - 20) <= 6 and abs(y1 - 60) <= 6
    mx0, my0, mx1, my1 = dense.mask_box(mask)
    assert x0 <= mx0 and y0 <= my0 and mx1 <= x1 and my1 <= y1 and (mx1 - mx0) >= (x1 - x0) - 4  # box = mask's
    assert dense.localize(sim, width=200, height=100, with_mask=False) == (None, box)  # same box, no mask drawn


def test_localize_drops_blobs_below_100_pixels():
    sim = np.zeros((10, 10), np.float32)
    sim[5, 5] = 1.0  # one cell of a 40x40 photo = 16 px: below the paper's 100 px
    _, box = dense.localize(sim, width=40, height=40)
    assert box is None


def test_foreground_patches_finds_what_references_share():
    rng = np.random.default_rng(0)
    parts = dense.l2_normalize(rng.normal(size=(4, 16)))  # the object's 4 part features
    grids, expected = [], []
    for k in range(3):
        grid = dense.l2_normalize(rng.normal(size=(6, 6, 16)))  # a different random background per photo
        x = 2 + k % 2  # the object moves between photos
        grid[1:3, x:x + 2] = parts.reshape(2, 2, 16)
        mask = np.zeros((6, 6), bool)
        mask[1:3, x:x + 2] = True
        grids.append(grid)
        expected.append(mask)
    for found, truth in zip(dense.foreground_patches(grids), expected):
        assert (found == truth).all()


def test_foreground_patches_does_not_take_a_backdrop_the_photos_share_for_the_object():
    """Photos of one session: the same backdrop behind the object in every photo. Without the
    photo's own border ring in the background bank, the backdrop is shared as much as the object."""
    rng = np.random.default_rng(1)
    backdrop, part = dense.l2_normalize(rng.normal(size=(2, 16)))
    grids, expected = [], []
    for k in range(3):
        grid = dense.l2_normalize(backdrop + 0.05 * rng.normal(size=(8, 8, 16)))
        y, x = 2 + k % 2, 3 - k % 2  # the object moves between photos, never to the border
        grid[y:y + 3, x:x + 3] = dense.l2_normalize(part + 0.05 * rng.normal(size=(3, 3, 16)))
        mask = np.zeros((8, 8), bool)
        mask[y:y + 3, x:x + 3] = True
        grids.append(grid)
        expected.append(mask)
    negatives = dense.l2_normalize(rng.normal(size=(50, 16)))  # other things: neither backdrop nor object
    for found, truth in zip(dense.foreground_patches(grids, negatives), expected):
        assert (found == truth).all()


def test_decision_threshold_cases():
    from edge_persrep.runtime import decision_threshold

    assert decision_threshold([0.9, 0.8], [0.3, 0.5], 0.1) == pytest.approx(0.65)
    assert decision_threshold([0.9, 0.8], [], 0.1) == pytest.approx(0.75)
    assert decision_threshold([], [], 0.42) == 0.42
    overlapping = decision_threshold([0.9, 0.6], [0.7, 0.2], 0.0)
    assert overlapping in (0.6, 0.7, 0.9)


def test_components_match_a_reference_flood_fill_on_random_masks():
    from collections import deque

    def flood_sizes(mask):
        seen, sizes = np.zeros_like(mask), []
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            seen[y, x], queue, n = True, deque([(y, x)]), 0
            while queue:
                cy, cx = queue.popleft()
                n += 1
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            sizes.append(n)
        return sorted(sizes)

    rng = np.random.default_rng(3)
    for _ in range(30):
        mask = rng.random((rng.integers(1, 20), rng.integers(1, 20))) < rng.uniform(0.2, 0.7)
        labels, n = dense.connected_components(mask)
        assert ((labels > 0) == mask).all()
        assert sorted(np.bincount(labels.ravel())[1:].tolist()) == flood_sizes(mask) and n == len(flood_sizes(mask))


def test_pooled_windows_by_hand():
    grid = np.zeros((3, 3, 2), np.float32)
    grid[..., 0] = 1  # every patch (1, 0) ...
    grid[0, 0] = [0, 1]  # ... but the top-left one
    feats, boxes = dense.pooled_windows(grid, [(2, 2), (3, 3)])
    assert boxes.tolist() == [[0, 0, 2, 2], [1, 0, 3, 2], [0, 1, 2, 3], [1, 1, 3, 3], [0, 0, 3, 3]]
    assert np.allclose(feats[0], np.array([3, 1]) / np.sqrt(10))  # mean (0.75, 0.25), normalised
    assert np.allclose(feats[1:4], [1, 0])
    assert np.allclose(feats[4], np.array([8, 1]) / np.sqrt(65))
    with pytest.raises(ValueError, match="no window"):
        dense.pooled_windows(grid, [(4, 4)])


def test_window_sizes_follow_the_grid():
    assert dense.window_sizes((10, 10)) == [(3, 3), (4, 4), (6, 6)]  # round(4.5) = 4
    assert dense.window_sizes((2, 2)) == [(1, 1)]
    assert dense.cells_to_pixels((1, 2, 3, 4), (10, 10), 200, 100) == (20, 20, 60, 40)


def test_mask_rle_by_hand_and_as_coco_reads_it():
    from edge_persrep.runtime.dense import mask_to_rle, rle_to_mask

    mask = np.array([[0, 1, 1],
                     [0, 1, 0]], bool)
    # column-major: 0 0 | 1 1 | 1 0 -> runs of False/True: 2, 3, 1
    assert mask_to_rle(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    assert mask_to_rle(~mask) == {"size": [2, 3], "counts": [0, 2, 3, 1]}  # starts with True: a 0-run first
    assert mask_to_rle(np.zeros((2, 2), bool))["counts"] == [4]
    mask_utils = pytest.importorskip("pycocotools.mask")
    big = np.random.default_rng(0).random((37, 53)) > 0.6
    rle = mask_to_rle(big)
    assert (rle_to_mask(rle) == big).all()
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *rle["size"]))
    assert (decoded.astype(bool) == big).all()


def test_equal_bins_count_as_numpys_histogram_does():
    """otsu_threshold's histogram is counted with bincount; numpy's own histogram is the oracle."""
    rng = np.random.default_rng(0)
    for _ in range(3000):  # locate's case: a small similarity map upsampled to the working grid
        coarse = rng.normal(size=(10, 10)).astype(np.float32) * rng.uniform(0.01, 1)
        fine = dense.upsample(coarse, int(rng.integers(20, 129)), int(rng.integers(20, 129)))
        values = fine.astype(np.float64).ravel()
        counts, edges = dense.equal_bins(values, values.min(), values.max(), 256)
        expected_counts, expected_edges = np.histogram(values, bins=256)
        assert np.array_equal(counts, expected_counts) and np.array_equal(edges, expected_edges)
