"""Patch-similarity maps -> masks and boxes (the paper's dense protocol), in numpy only.

The runtime ships inside apps, so it does not pull in scipy or OpenCV for three small operations:
Otsu's threshold (a histogram), 3x3 morphology (array shifts) and connected components (the
runs of each row joined by vectorised union-find, on a working grid of at most `WORK_SIDE` pixels a side).
The paper's steps, in order: target feature = (mean + max) / 2 of the reference's foreground
patches; cosine to every test patch; upsample; Otsu; drop blobs < 100 px (at photo resolution);
morphological clean-up; largest component = mask; its extent = box.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .images import resample

WORK_SIDE = 128  # long side of the grid on which the mask is thresholded and cleaned
LOCATE_SLACK = 0.02  # object_window: chosen on one procedural dataset, checked on another (benchmarks/dense_grid.py)
MIN_BLOB_PIXELS = 100  # paper: blobs smaller than this (photo pixels) are dropped


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def target_feature(patches: np.ndarray) -> np.ndarray:
    """(mean + max) / 2 over foreground patch features [P, C] -> unit vector [C]."""
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 2 or len(patches) == 0:
        raise ValueError("target_feature needs a non-empty [P, C] array")
    return l2_normalize((patches.mean(axis=0) + patches.max(axis=0)) / 2)


def similarity_map(grid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cosine of every patch of a unit-normalised grid [h, w, C] to the nearest of K unit targets [K, C]."""
    return np.einsum("hwc,kc->khw", grid, targets).max(axis=0)


def upsample(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map [h, w] to [height, width]."""
    im = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(resample(im, width, height, Image.BILINEAR), dtype=np.float32)


def equal_bins(values: np.ndarray, lo: float, hi: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """`np.histogram(values, bins)` for float64 values [N] whose min `lo` < max `hi` (the caller
    has them): counts [bins] and edges [bins + 1] of equal bins over [lo, hi], the last one
    closed. Counted with `np.bincount`: the same counts and edges as np.histogram on 3,000 random
    maps (tests/test_dense.py) at a fifth of the time (0.07 against 0.36 ms for otsu_threshold on
    locate's 128 px working grid), since np.histogram re-checks the range and bin edges of every value."""
    index = np.minimum(((values - lo) * (bins / (hi - lo))).astype(np.intp), bins - 1)
    return np.bincount(index, minlength=bins), np.linspace(lo, hi, bins + 1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising between-class variance of a histogram of `values`."""
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-12:
        return hi
    counts, edges = equal_bins(values, lo, hi, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(counts)[:-1].astype(np.float64)
    weight1 = counts.sum() - weight0
    sum0 = np.cumsum(counts * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (np.sum(counts * centres) - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1:-1][int(np.argmax(between))])


def erode(mask: np.ndarray) -> np.ndarray:
    """3x3 square erosion (outside the image counts as set), as a row pass then a column pass."""
    p = np.pad(mask, 1, constant_values=True)
    rows = p[:, :-2] & p[:, 1:-1] & p[:, 2:]
    return rows[:-2] & rows[1:-1] & rows[2:]


def dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 square dilation, separable like erode."""
    p = np.pad(mask, 1, constant_values=False)
    rows = p[:, :-2] | p[:, 1:-1] | p[:, 2:]
    return rows[:-2] | rows[1:-1] | rows[2:]


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Morphological opening (drops specks) then closing (fills pin-holes), 3x3 square element."""
    return erode(dilate(dilate(erode(mask))))


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labelling: labels [h, w] (0 = background, 1..n, numbered in the order of each
    blob's first pixel, row by row) and n.

    Works on runs, not pixels, and without a Python loop: runs in adjacent rows that overlap are
    edges of a graph, whose components are found by hooking each edge's larger root onto its
    smaller one and jumping pointers until nothing changes (a handful of numpy passes)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    starts = mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :w]  # a run begins where the left neighbour is unset
    run_id = np.cumsum(starts.ravel()).reshape(h, w) - 1  # every pixel's run, numbered row by row
    n_runs = int(starts.sum())
    if n_runs == 0:
        return np.zeros((h, w), dtype=np.int32), 0
    both = mask[:-1] & mask[1:]  # a pixel and the one below it: their runs touch
    a, b = run_id[:-1][both], run_id[1:][both]
    root = np.arange(n_runs)
    while True:
        ra, rb = root[a], root[b]
        if (ra == rb).all():
            break
        np.minimum.at(root, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # pointer jumping: every run points at its root
            jumped = root[root]
            if (jumped == root).all():
                break
            root = jumped
    roots, label = np.unique(root, return_inverse=True)  # roots are each blob's first run: row-major order
    labels = np.where(mask, label[run_id] + 1, 0).astype(np.int32)
    return labels, len(roots)


def largest_component(mask: np.ndarray, min_area: int = 1, anchor: np.ndarray | None = None) -> np.ndarray:
    """The largest 4-connected blob of `mask` with at least `min_area` pixels (all False if none).

    With `anchor` (a bool map of the same shape: where the object was recognised), the blob that
    overlaps it most wins instead, the largest one only among equals or when none overlaps: in a
    cluttered photo, look-alikes light up the similarity map too, and the biggest of them is not
    necessarily the one recognised."""
    labels, n = connected_components(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    areas[areas < min_area] = 0
    if not areas.any():
        return np.zeros_like(mask, dtype=bool)
    rank = areas.astype(np.float64)
    if anchor is not None:
        overlap = np.bincount(labels[anchor], minlength=n + 1).astype(np.float64)
        overlap[0] = 0
        overlap[areas == 0] = 0
        if overlap.any():
            rank = overlap * (areas.max() + 1) + areas  # most overlap first, then the larger
    return labels == int(np.argmax(rank))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Extent of a mask as [x0, y0, x1, y1) in pixels (x1, y1 exclusive), or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed run-length encoding of a bool mask [h, w]: {"size": [h, w], "counts":
    run lengths in column-major order, starting with a run of False (0 when the first pixel is
    True)}. Any COCO reader decodes it (pycocotools: mask.frPyObjects(rle, h, w)); JSON-ready."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict) -> np.ndarray:
    """mask_to_rle's inverse."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape((h, w), order="F")


def localize(sim: np.ndarray, width: int, height: int, anchor: tuple[int, int, int, int] | None = None,
             with_mask: bool = True) -> tuple[np.ndarray | None, tuple[int, int, int, int] | None]:
    """Similarity map [h, w] -> (bool mask [height, width] or None without `with_mask`, box in photo
    pixels or None).

    Otsu's cut of the upsampled map, cleaned; the blob kept is the largest. With `anchor` (a box in
    photo pixels: where the object is, `object_window`), the blob that overlaps it most, cut to
    the anchor (the anchor itself if nothing of the blob is left): in clutter, look-alikes beside
    the object pass Otsu's cut too and join its blob. All of it runs on the working grid; the box
    is the blob's extent scaled to the photo, and only the mask is drawn at the photo's size (a
    12-megapixel photo costs one uint8 resize, and nothing when no mask is asked for)."""
    scale = WORK_SIDE / max(width, height)
    work_w, work_h = max(1, round(width * scale)), max(1, round(height * scale))
    fine = upsample(sim, work_w, work_h)
    binary = clean_mask(fine > otsu_threshold(fine))
    min_area = max(1, round(MIN_BLOB_PIXELS * (work_w * work_h) / (width * height)))
    anchor_map = None
    if anchor is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in anchor)
        anchor_map = np.zeros((work_h, work_w), dtype=bool)
        anchor_map[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    blob = largest_component(binary, min_area=min_area, anchor=anchor_map)
    if anchor_map is not None:
        inside = blob & anchor_map
        blob = inside if inside.any() else anchor_map
    if not blob.any():
        return (np.zeros((height, width), dtype=bool) if with_mask else None), None
    x0, y0, x1, y1 = mask_box(blob)
    sx, sy = width / work_w, height / work_h
    box = (int(x0 * sx), int(y0 * sy), min(width, int(np.ceil(x1 * sx))), min(height, int(np.ceil(y1 * sy))))
    mask = resize_mask(blob, width, height) if with_mask else None
    return mask, box


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A bool mask resized (bilinear, cut at half) to [height, width], in uint8: 4x cheaper than in
    float. On one thread: bands (images.resample) saved under 15% even at 12 megapixels, where the
    cut and the copy dominate, and cost 40% at 384 px."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(resample(image, width, height, Image.BILINEAR)) >= 128


def object_window(scores: np.ndarray, cells: np.ndarray, slack: float = LOCATE_SLACK) -> np.ndarray:
    """Where the object is on the grid, from the region windows' scores [N] and boxes [N, 4] (cells):
    the largest window scoring within `slack` of the best one that contains the best one's centre
    (several equally large ones: their mean box, so that no direction is preferred).
    The best window alone is often a part of a large object (a part matches the references as well
    as the whole); windows that reach over a look-alike or background score lower and are left out."""
    best = cells[int(np.argmax(scores))]
    cx, cy = (best[0] + best[2]) / 2, (best[1] + best[3]) / 2
    near = (scores >= scores.max() - slack) & (cells[:, 0] <= cx) & (cx <= cells[:, 2]) \
        & (cells[:, 1] <= cy) & (cy <= cells[:, 3])
    areas = np.where(near, (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1]), -1)
    largest = cells[areas == areas.max()]
    return np.rint(largest.mean(axis=0)).astype(cells.dtype)  # equally large ones: their mean box


def mask_to_grid(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """A photo-sized object mask -> the grid cells at least half covered (at least the best cell)."""
    h, w = grid_hw
    coverage = upsample(np.asarray(mask, dtype=np.float32), w, h)  # area average at this downscale
    cells = coverage >= 0.5
    if not cells.any():
        cells = coverage >= coverage.max()
    return cells


def foreground_patches(grids: list[np.ndarray], negative_patches: np.ndarray | None = None) -> list[np.ndarray]:
    """Find each reference photo's object patches without masks.

    A patch belongs to the object if it matches the *other* reference photos (the object is what
    the photos share) better than it matches the background bank: the patches of negative photos
    and that photo's own border ring. The ring is there because photos taken in one session share
    their backdrop too (the cat's garden, the corgi's orange wall): without it the backdrop is
    "what the photos share" as much as the object. Score = match - background; the cut is Otsu's
    over the cells inside the ring, and the largest connected blob is kept. Returns one bool mask [h, w] per grid.
    """
    masks = []
    for i, grid in enumerate(grids):
        h, w, c = grid.shape
        flat = grid.reshape(-1, c)
        others = [g.reshape(-1, c) for j, g in enumerate(grids) if j != i]
        if others:
            match = np.mean([(flat @ o.T).max(axis=1) for o in others], axis=0)
        else:
            match = np.ones(len(flat), dtype=np.float32)
        ring = np.ones((h, w), dtype=bool)
        ring[1:-1, 1:-1] = False
        bank = [flat[ring.ravel()]]
        if negative_patches is not None and len(negative_patches):
            bank.append(negative_patches)
        background = (flat @ np.concatenate(bank).T).max(axis=1)
        score = (match - background).reshape(h, w)
        inside = score[~ring] if (~ring).any() else score  # the ring matches itself: no part of the cut
        mask = largest_component(score > otsu_threshold(inside))
        if not mask.any():
            mask = score >= score.max()
        masks.append(mask)
    return masks


REGION_FRACTIONS = (0.3, 0.45, 0.6)  # window side / grid side: an object in a 3x3 or 2x2 scene cell, or larger


def window_sizes(grid_hw: tuple[int, int], fractions: tuple[float, ...] = REGION_FRACTIONS) -> list[tuple[int, int]]:
    """Square-ish windows (rows, cols) on an [h, w] grid, one per fraction of its sides, distinct."""
    h, w = grid_hw
    sizes = [(max(1, round(f * h)), max(1, round(f * w))) for f in fractions]
    return list(dict.fromkeys(sizes))


@functools.lru_cache(maxsize=16)
def window_matrix(grid_hw: tuple[int, int], sizes: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every size slid with stride 1 over an [h, w] grid: a 0/1 membership matrix
    [N, h*w] (row n marks window n's cells) and the boxes [N, 4] (x0, y0, x1, y1, exclusive)."""
    h, w = grid_hw
    rows, boxes = [], []
    for kh, kw in sizes:
        for y in range(h - kh + 1):
            for x in range(w - kw + 1):
                cells = np.zeros((h, w), dtype=np.float32)
                cells[y:y + kh, x:x + kw] = 1
                rows.append(cells.ravel())
                boxes.append((x, y, x + kw, y + kh))
    if not rows:
        raise ValueError(f"no window of sizes {list(sizes)} fits a {h}x{w} grid")
    return np.stack(rows), np.array(boxes)


def pooled_windows(grid: np.ndarray, sizes: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every size slid over a grid [h, w, C] with stride 1, mean-pooled and
    L2-normalised: (features [N, C], boxes [N, 4] as grid cells x0, y0, x1, y1 exclusive).

    One matrix product with the windows' membership matrix (0.6 ms for Lite0's 10x10x1280 grid,
    where a summed-area table in numpy took 8 ms). Mean-pooling unit patches is how the references'
    object features (`box_features`) are made, so the two compare.
    """
    h, w, c = grid.shape
    membership, boxes = window_matrix((h, w), tuple(sizes))
    return l2_normalize(membership @ np.asarray(grid, dtype=np.float32).reshape(h * w, c)), boxes


def region_windows(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The windows region scoring compares: every REGION_FRACTIONS size on this grid, pooled."""
    return pooled_windows(grid, window_sizes(grid.shape[:2]))


def cells_to_pixels(box: np.ndarray | tuple, grid_hw: tuple[int, int], width: int,
                    height: int) -> tuple[int, int, int, int]:
    """A box in grid cells [x0, y0, x1, y1) -> the same region in photo pixels."""
    h, w = grid_hw
    x0, y0, x1, y1 = (int(v) for v in box)
    return (round(x0 * width / w), round(y0 * height / h), round(x1 * width / w), round(y1 * height / h))
