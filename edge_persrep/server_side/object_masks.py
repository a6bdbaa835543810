"""Object masks without the user drawing any: what the reference photos share, against negatives.

The runtime's foreground discovery (runtime.finder.object_cells -> dense.foreground_patches) on the
pretrained backbone's patch grids, each grid's object cells upsampled to its photo. Coarse (one
cell is 1/10 of the photo at 320 px) but enough to cut the object out for in-context positives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime import dense
from ..runtime.finder import object_cells
from ..runtime.images import load_image
from .backbones import Backbone
from .embedder import Embedder


def find_object_masks(backbone: Backbone, photos: Sequence[Path], negatives: Sequence[Path],
                      device: str = "cpu") -> list[np.ndarray]:
    """One bool mask per photo, photo-sized: the cells foreground discovery finds, bilinearly
    upsampled and cut at half."""
    embed = Embedder(backbone, device)
    features = embed([load_image(p) for p in photos])
    negative_features = embed([load_image(p) for p in negatives]) if negatives else []
    cells = object_cells(features, negatives=negative_features)
    return [dense.upsample(c.astype(np.float32), f.width, f.height) >= 0.5 for c, f in zip(cells, features)]
