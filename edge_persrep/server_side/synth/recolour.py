"""Recoloured negatives: the user's own object in another colour, as "same shape, not mine".

Positives are `augment`'s (the paper's augmentations of the photos). The negatives are the photos
again with the object's hue turned by 60-300 degrees inside its mask (the user's `--masks`, or
found from what the photos share: server_side.object_masks), the rest of the photo untouched. A
look-alike that differs from the user's object mostly in colour pattern (two sneakers, two cats,
two plushies) is what a model trained against other identities alone confuses; these negatives
teach, from the user's photos alone, that the colour is part of the identity, without touching
any identity the model will meet. The hue turn is far beyond what lighting does to a photo.

An object with little colour (a grey plushie, a black-and-white dog) has nothing to turn: below
MIN_SATURATION no negative is made for its photo (the manifest says so). The negatives train
only: enrolment never calibrates `present` on them (SynthResult.negatives_calibrate).
"""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
from PIL import Image, ImageFilter

from ...runtime.images import load_image
from ..transforms import paper_augment
from .augment import generate as augment_positives
from .base import SynthRequest, SynthResult, load_masks, run_generator

PER_PHOTO = 4  # recoloured copies of each photo
HUE_TURN = (60.0, 300.0)  # degrees
MIN_SATURATION = 25  # median HSV saturation (0-255) inside the mask below which a photo is skipped


def recoloured(photo: Image.Image, mask: np.ndarray, turn_degrees: float) -> Image.Image:
    """`photo` with the hue inside `mask` (bool, photo-sized) turned by `turn_degrees` (the
    mask's edge softened over a pixel or two so no seam is drawn)."""
    h, s, v = (np.asarray(c) for c in photo.convert("HSV").split())
    h = ((h.astype(np.int32) + round(turn_degrees / 360 * 256)) % 256).astype(np.uint8)
    turned = Image.merge("HSV", [Image.fromarray(c) for c in (h, s, v)]).convert("RGB")
    alpha = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1))
    return Image.composite(turned, photo.convert("RGB"), alpha)


def colourful(photo: Image.Image, mask: np.ndarray) -> bool:
    """Whether the object has colour to turn: median saturation inside its mask >= MIN_SATURATION."""
    saturation = np.asarray(photo.convert("HSV"))[..., 1]
    return bool(mask.any()) and float(np.median(saturation[mask])) >= MIN_SATURATION


def generate(request: SynthRequest) -> SynthResult:
    positives = augment_positives(request)
    photos = [load_image(p) for p in request.photos]
    masks = load_masks(request)
    sources = [i for i, (photo, mask) in enumerate(zip(photos, masks)) if colourful(photo, mask)]
    settings = {"per_photo": PER_PHOTO, "hue_turn": list(HUE_TURN), "min_saturation": MIN_SATURATION,
                "recoloured_photos": [request.photos[i].name for i in sources]}
    if not sources:
        return SynthResult(positives.positives, positives.manifest, negatives_calibrate=False)

    def make_one(rng: random.Random, index: int):
        source = sources[index % len(sources)]
        turn = rng.uniform(*HUE_TURN)
        image, params = paper_augment(recoloured(photos[source], masks[source], turn), rng, request.size)
        return image, {"source": request.photos[source].name, "hue_turn": round(turn, 1), **params}

    negatives = run_generator(replace(request, count=PER_PHOTO * len(sources)), "recolour",
                              make_one, subdir="negatives", manifest_name="negatives.json", settings=settings)
    return SynthResult(positives.positives, positives.manifest, negatives.positives, negatives_calibrate=False)
