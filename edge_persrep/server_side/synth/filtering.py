"""Keep a generated positive only if the object in it looks like the real one (the paper's filter).

The paper segments the generated object (perSAM), embeds the masked crop (DreamSim) and keeps the
image if the mean cosine to the masked real photos is >= 0.6 (0.55 for animals). We do the same with
what the package already has, so no extra weights are needed: the pretrained backbone's patch
features find the object (the runtime's dense localisation against the real photos' object
patches), the box is cropped and embedded, and the score is the mean cosine of that crop to the
real object crops. Thresholds are configurable: the scale of a cosine depends on the embedder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...runtime import dense
from ...runtime.files import atomic_write_json
from ...runtime.finder import ImageFeatures, object_cells
from ...runtime.images import load_image
from ..embedder import Embedder
from .prompts import group_of

PAPER_THRESHOLD = 0.6
PAPER_THRESHOLD_ANIMALS = 0.55


def default_threshold(category: str) -> float:
    return PAPER_THRESHOLD_ANIMALS if group_of(category) == "animal" else PAPER_THRESHOLD


def object_crops(photos: Sequence[Image.Image], features: Sequence[ImageFeatures],
                 masks: Sequence[np.ndarray] | None) -> tuple[list[Image.Image], np.ndarray]:
    """The real photos' object crops (from masks, else found from what the photos share) and the
    object's patch targets [n, C] for localising it in generated images."""
    crops, targets = [], []
    for photo, f, m in zip(photos, features, object_cells(features, masks)):
        h, w = m.shape
        x0, y0, x1, y1 = dense.mask_box(m)
        crops.append(photo.crop((x0 * photo.width // w, y0 * photo.height // h,
                                 -(-x1 * photo.width // w), -(-y1 * photo.height // h))))
        targets.append(dense.target_feature(f.grid[m]))
    return crops, np.stack(targets)


def score_key(path: Path) -> str:
    """How a candidate is named in the report: `positives/00012.jpg`, like the manifest."""
    return f"{path.parent.name}/{path.name}"


@dataclass
class FilterReport:
    kept: list[Path]
    scores: dict[str, float]  # by score_key
    threshold: float

    @property
    def dropped(self) -> int:
        return len(self.scores) - len(self.kept)


def filter_generated(embed: Embedder, photos: Sequence[Image.Image], masks: Sequence[np.ndarray] | None,
                     candidates: Sequence[Path], threshold: float, report_path: Path | None = None) -> FilterReport:
    """Score every candidate (mean cosine of its object crop to the real crops) and keep those >= threshold."""
    crops, targets = object_crops(photos, embed(photos), masks)
    reference = np.stack([f.embedding for f in embed(crops)])
    scores: dict[str, float] = {}
    for start in tqdm(range(0, len(candidates), 64), desc="filter", unit="batch of 64", leave=False):
        paths = candidates[start:start + 64]
        images = [load_image(p) for p in paths]
        located = []
        for image, f in zip(images, embed(images)):
            _, box = dense.localize(dense.similarity_map(f.grid, targets), f.width, f.height, with_mask=False)
            located.append(image.crop(box) if box is not None else image)
        for path, f in zip(paths, embed(located)):
            scores[score_key(path)] = round(float((reference @ f.embedding).mean()), 4)
    kept = [p for p in candidates if scores[score_key(p)] >= threshold]
    report = FilterReport(kept, scores, threshold)
    if report_path is not None:
        atomic_write_json(report_path, {"threshold": threshold, "kept": len(kept), "dropped": report.dropped,
                                        "scores": scores})
    return report
