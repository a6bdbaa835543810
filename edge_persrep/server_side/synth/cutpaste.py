"""Cut-and-Paste positives: the real foreground (from its mask) pasted at 0.3-1.3x scale at a random
place on a background. The paper's cheapest generator and its strongest for object fidelity."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

from ...runtime.dense import mask_box
from ...runtime.images import load_image
from .base import SynthRequest, SynthResult, load_masks, run_generator

OBJECT_FRACTION = 0.6  # at scale 1.0 the object's long side spans 60% of the background's short side


def noise_background(rng: random.Random, size: int) -> Image.Image:
    """A smooth random colour field, used when no background photos are given."""
    arr = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(size / 16))


def paste(background: Image.Image, cutout: Image.Image, alpha: Image.Image, rng: random.Random,
          scale_range=(0.3, 1.3)) -> tuple[Image.Image, dict]:
    bw, bh = background.size
    scale = rng.uniform(*scale_range)
    long_side = scale * OBJECT_FRACTION * min(bw, bh)
    factor = min(long_side / max(cutout.size), bw / cutout.width, bh / cutout.height)
    w, h = max(1, round(cutout.width * factor)), max(1, round(cutout.height * factor))
    x, y = rng.randint(0, bw - w), rng.randint(0, bh - h)
    out = background.copy()
    out.paste(cutout.resize((w, h), Image.BICUBIC), (x, y), alpha.resize((w, h), Image.BILINEAR))
    return out, {"scale": round(scale, 3), "box": [x, y, x + w, y + h]}


def generate(request: SynthRequest) -> SynthResult:
    photos = [load_image(p) for p in request.photos]
    cutouts = []
    for photo, mask in zip(photos, load_masks(request)):
        box = mask_box(mask)
        alpha = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1))
        cutouts.append((photo.crop(box), alpha.crop(box)))
    backgrounds = request.backgrounds

    def make_one(rng: random.Random, index: int):
        source = index % len(cutouts)
        if backgrounds:
            bg_path = backgrounds[rng.randrange(len(backgrounds))]
            bg = load_image(bg_path).resize((request.size, request.size), Image.BICUBIC)
            bg_name = bg_path.name
        else:
            bg, bg_name = noise_background(rng, request.size), "noise"
        cutout, alpha = cutouts[source]
        if rng.random() < 0.5:
            cutout, alpha = cutout.transpose(Image.FLIP_LEFT_RIGHT), alpha.transpose(Image.FLIP_LEFT_RIGHT)
        image, params = paste(bg, cutout, alpha, rng)
        return image, {"source": request.photos[source].name, "background": bg_name, **params}

    return run_generator(request, "cutpaste", make_one)
