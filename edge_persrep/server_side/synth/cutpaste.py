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
SCALE_RANGE = (0.3, 1.3)


def noise_background(rng: random.Random, size: int) -> Image.Image:
    """A smooth random colour field, used when no background photos are given."""
    arr = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(size / 16))


def paste(background: Image.Image, cutout: Image.Image, alpha: Image.Image, rng: random.Random,
          scale_range=SCALE_RANGE) -> tuple[Image.Image, dict]:
    bw, bh = background.size
    scale = rng.uniform(*scale_range)
    long_side = scale * OBJECT_FRACTION * min(bw, bh)
    factor = min(long_side / max(cutout.size), bw / cutout.width, bh / cutout.height)
    w, h = max(1, round(cutout.width * factor)), max(1, round(cutout.height * factor))
    x, y = rng.randint(0, bw - w), rng.randint(0, bh - h)
    out = background.copy()
    out.paste(cutout.resize((w, h), Image.BICUBIC), (x, y), alpha.resize((w, h), Image.BILINEAR))
    return out, {"scale": round(scale, 3), "box": [x, y, x + w, y + h]}


def cutouts(request: SynthRequest) -> list[tuple[Image.Image, Image.Image]]:
    """Each photo's object, cropped to its mask's box, with a softened alpha."""
    out = []
    for path, mask in zip(request.photos, load_masks(request)):
        box = mask_box(mask)
        alpha = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1))
        out.append((load_image(path).crop(box), alpha.crop(box)))
    return out


def pasted(request: SynthRequest, cutout: tuple[Image.Image, Image.Image], rng: random.Random,
           scale_range=SCALE_RANGE) -> tuple[Image.Image, dict]:
    """One cutout (flipped half the time) pasted on a random background of the request (a smooth
    noise field when it has none)."""
    if request.backgrounds:
        bg_path = request.backgrounds[rng.randrange(len(request.backgrounds))]
        bg = load_image(bg_path).resize((request.size, request.size), Image.BICUBIC)
        bg_name = bg_path.name
    else:
        bg, bg_name = noise_background(rng, request.size), "noise"
    image, alpha = cutout
    if rng.random() < 0.5:
        image, alpha = image.transpose(Image.FLIP_LEFT_RIGHT), alpha.transpose(Image.FLIP_LEFT_RIGHT)
    out, params = paste(bg, image, alpha, rng, scale_range)
    return out, {"background": bg_name, **params}


def generate(request: SynthRequest) -> SynthResult:
    objects = cutouts(request)

    def make_one(rng: random.Random, index: int):
        source = index % len(objects)
        image, params = pasted(request, objects[source], rng)
        return image, {"source": request.photos[source].name, **params}

    return run_generator(request, "cutpaste", make_one)
