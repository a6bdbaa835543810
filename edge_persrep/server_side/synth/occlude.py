"""Occluded positives: the object partly hidden, as things in front of it hide it in real photos.

Even-numbered positives are `augment`'s (the paper's augmentations of a photo). Odd-numbered ones
are the same augmentation with a rectangle covered: random erasing (Zhong et al., AAAI 2020) with
its usual area (2-33% of the image) and aspect (0.3-3.3). The cover is a smooth random colour
field, never a patch of a negative photo: content of a look-alike (or of any negative) inside a
positive would teach it as part of the object. No mask is needed.

The negatives get the same: each of the request's backgrounds (`personalize` passes the training
negatives, or `--backgrounds` when given) once more, augmented and covered the same way, as a
generated negative. Without them the cover itself is a cue for "positive": measured on the
validation split, other subjects' occluded photos were called present 4x as often (0.25 against
0.06).
"""

from __future__ import annotations

import dataclasses
import math
import random

from PIL import Image

from ...runtime.images import load_image
from ..transforms import paper_augment
from .base import SynthRequest, SynthResult, run_generator
from .cutpaste import noise_background

OCCLUDED_AREA = (0.02, 0.33)  # random erasing's defaults (torchvision.transforms.RandomErasing)
OCCLUDER_ASPECT = (0.3, 3.3)


def occluder_box(rng: random.Random, size: int, area=OCCLUDED_AREA,
                 aspect=OCCLUDER_ASPECT) -> tuple[int, int, int, int]:
    """A rectangle [x0, y0, x1, y1) inside a size x size image: area share uniform in `area`,
    aspect (w / h) log-uniform in `aspect`, clipped to the image."""
    share = rng.uniform(*area)
    ratio = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    w = min(size, max(1, round(size * math.sqrt(share * ratio))))
    h = min(size, max(1, round(size * math.sqrt(share / ratio))))
    x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
    return x0, y0, x0 + w, y0 + h


def occluded(image: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    """`image` (square) with an occluder_box covered by the same box of a smooth random colour field."""
    size = image.width
    box = occluder_box(rng, size)
    out = image.copy()
    out.paste(noise_background(rng, size).crop(box), box[:2])
    return out, {"occluder": list(box)}


def generate(request: SynthRequest) -> SynthResult:
    photos = [load_image(p) for p in request.photos]

    def make_one(rng: random.Random, index: int):
        source = (index // 2) % len(photos)
        image, params = paper_augment(photos[source], rng, request.size)
        params = {"source": request.photos[source].name, **params}
        if index % 2 == 0:
            return image, {**params, "kind": "photo"}
        image, box = occluded(image, rng)
        return image, {**params, "kind": "occluded", **box}

    positives = run_generator(request, "occlude", make_one)
    if not request.backgrounds:
        return positives
    negatives = [load_image(p) for p in request.backgrounds]

    def make_negative(_rng: random.Random, index: int):
        rng = random.Random(f"{request.seed}:negative:{index}")  # not the positives' draws
        image, params = paper_augment(negatives[index], rng, request.size)
        image, box = occluded(image, rng)
        return image, {"source": request.backgrounds[index].name, **params, "kind": "occluded", **box}

    made = run_generator(dataclasses.replace(request, count=len(negatives)), "occlude", make_negative,
                         subdir="negatives", manifest_name="negatives.json")
    return dataclasses.replace(positives, negatives=made.positives)
