"""The paper's training augmentation, shared by contrastive training and the augmentation-only generator."""

from __future__ import annotations

import random

from PIL import Image


def paper_augment(image: Image.Image, rng: random.Random, size: int, scale=(0.8, 1.0),
                  degrees=10.0) -> tuple[Image.Image, dict]:
    """Horizontal flip (p 0.5), rotation within +-10 deg, RandomResizedCrop(size, scale 0.8-1.0, ratio 3/4-4/3)."""
    flip = rng.random() < 0.5
    angle = rng.uniform(-degrees, degrees)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = image.rotate(angle, resample=Image.BILINEAR)
    w, h = image.size
    area = rng.uniform(*scale) * w * h
    ratio = 2 ** rng.uniform(-0.415, 0.415)  # log-uniform in [3/4, 4/3]
    cw, ch = min(w, round((area * ratio) ** 0.5)), min(h, round((area / ratio) ** 0.5))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = image.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    return crop, {"flip": flip, "angle": round(angle, 3), "crop": [x0, y0, x0 + cw, y0 + ch]}
