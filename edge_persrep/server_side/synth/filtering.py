"""Keep a generated positive only if the object in it looks like the real one (the paper's filter).

The paper segments the generated object (perSAM), embeds the masked crop (DreamSim) and keeps the
image if the mean cosine to the masked real photos is >= 0.6 (0.55 for animals). We do the same with
what the package already has, so no extra weights are needed: the pretrained backbone's patch
features find the object (the runtime's dense localisation against the real photos' object
patches), the box is cropped and embedded, and the score is the mean cosine of that crop to the
real object crops. Thresholds are configurable: the scale of a cosine depends on the embedder.

Patch quality (PatchDPO, Huang et al. 2024: a generated image is usually wrong in some patches,
not as a whole): each patch of the located object is matched to its best counterpart among the
real photos' object patches (cosine of the pretrained backbone's patch features), and the image's
patch score is the PATCH_QUANTILE quantile of those qualities, so a wrong part (a head, a logo)
lowers it even when most of the object is right. `mode="patch"` filters on it; both scores are
always computed and reported (benchmarks/filter_threshold.py compares them on real photos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...runtime import dense
from ...runtime.errors import EdgePersrepError
from ...runtime.files import atomic_write_json
from ...runtime.finder import ImageFeatures, object_cells
from ...runtime.images import load_image
from ..embedder import Embedder
from ..options import FILTER_MODES, PATCH_THRESHOLD
from .base import score_key
from .prompts import group_of

PAPER_THRESHOLD = 0.6
PAPER_THRESHOLD_ANIMALS = 0.55
PATCH_QUANTILE = 0.25  # chosen before measuring: a quarter of the object's patches may be poor


def default_threshold(category: str, mode: str = "global") -> float:
    if mode == "patch":
        return PATCH_THRESHOLD
    return PAPER_THRESHOLD_ANIMALS if group_of(category) == "animal" else PAPER_THRESHOLD


@dataclass
class RealObject:
    """What the filter compares generations with, from the real photos."""

    crops: list[Image.Image]  # the object cropped from each photo
    targets: np.ndarray  # [n, C] per photo, the patch target that localises it (dense.target_feature)
    patches: np.ndarray  # [m, C] every object patch of every photo (unit vectors), for patch quality


def real_object(photos: Sequence[Image.Image], features: Sequence[ImageFeatures],
                masks: Sequence[np.ndarray] | None) -> RealObject:
    """The real photos' object (from masks, else found from what the photos share)."""
    crops, targets, patches = [], [], []
    for photo, f, m in zip(photos, features, object_cells(features, masks)):
        h, w = m.shape
        x0, y0, x1, y1 = dense.mask_box(m)
        crops.append(photo.crop((x0 * photo.width // w, y0 * photo.height // h,
                                 -(-x1 * photo.width // w), -(-y1 * photo.height // h))))
        targets.append(dense.target_feature(f.grid[m]))
        patches.append(f.grid[m])
    return RealObject(crops, np.stack(targets), np.concatenate(patches))


def locate_object(features: ImageFeatures, real: RealObject) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The real object found in a generated image: (photo-sized mask, box or None), by the
    runtime's dense localisation against the real photos' patch targets."""
    return dense.localize(dense.similarity_map(features.grid, real.targets), features.width, features.height)


def quality_map(features: ImageFeatures, real: RealObject, mask: np.ndarray) -> np.ndarray:
    """The patch grid [h, w] of a generated image: on the cells the located object (`mask`, from
    locate_object) half covers, each patch's best cosine to the real object's patches; NaN elsewhere."""
    qualities = np.full(features.grid.shape[:2], np.nan, np.float32)
    if mask.any():
        cells = dense.mask_to_grid(mask, features.grid.shape[:2])
        qualities[cells] = (features.grid[cells] @ real.patches.T).max(axis=1)
    return qualities


def patch_qualities(features: ImageFeatures, real: RealObject, mask: np.ndarray) -> np.ndarray:
    """Each patch of the object located in a generated image: its best cosine to the real object's
    patches (empty if nothing is located)."""
    qualities = quality_map(features, real, mask)
    return qualities[~np.isnan(qualities)]


def patch_score(qualities: np.ndarray, quantile: float = PATCH_QUANTILE) -> float:
    """An image's patch score: the `quantile` quantile of its patch qualities (0 with no patch)."""
    return float(np.quantile(qualities, quantile)) if len(qualities) else 0.0


@dataclass
class FilterReport:
    kept: list[Path]
    scores: dict[str, float]  # by score_key: the global crop score
    threshold: float
    patch_scores: dict[str, float] = field(default_factory=dict)  # by score_key: patch_score
    mode: str = "global"  # which of the two `threshold` applies to

    @property
    def chosen(self) -> dict[str, float]:
        """The scores `threshold` applies to (`mode`'s)."""
        return self.scores if self.mode == "global" else self.patch_scores

    @property
    def dropped(self) -> int:
        return len(self.scores) - len(self.kept)


def filter_generated(embed: Embedder, photos: Sequence[Image.Image], masks: Sequence[np.ndarray] | None,
                     candidates: Sequence[Path], threshold: float, report_path: Path | None = None,
                     mode: str = "global") -> FilterReport:
    """Score every candidate and keep those whose `mode` score is >= threshold: "global", the mean
    cosine of its object crop to the real crops (the paper's); "patch", its patch score."""
    if mode not in FILTER_MODES:
        raise EdgePersrepError(f"unknown filter mode '{mode}': use {' or '.join(FILTER_MODES)}")
    real = real_object(photos, embed(photos), masks)
    reference = np.stack([f.embedding for f in embed(real.crops)])
    scores: dict[str, float] = {}
    patch_scores: dict[str, float] = {}
    for start in tqdm(range(0, len(candidates), 64), desc="filter", unit="batch of 64", leave=False):
        paths = candidates[start:start + 64]
        images = [load_image(p) for p in paths]
        located = []
        for path, image, f in zip(paths, images, embed(images)):
            mask, box = locate_object(f, real)
            located.append(image.crop(box) if box is not None else image)
            patch_scores[score_key(path)] = round(patch_score(patch_qualities(f, real, mask)), 4)
        for path, f in zip(paths, embed(located)):
            scores[score_key(path)] = round(float((reference @ f.embedding).mean()), 4)
    report = FilterReport([], scores, threshold, patch_scores, mode)
    report.kept = [p for p in candidates if report.chosen[score_key(p)] >= threshold]
    if report_path is not None:
        atomic_write_json(report_path, {"mode": mode, "threshold": threshold, "kept": len(report.kept),
                                        "dropped": report.dropped, "scores": scores, "patch_scores": patch_scores,
                                        "patch_quantile": PATCH_QUANTILE})
    return report
