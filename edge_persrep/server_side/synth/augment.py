"""Augmentation-only positives: the paper's real-only baseline (its augmentations, nothing else)."""

from __future__ import annotations

import random

from ...runtime.images import load_image
from ..transforms import paper_augment
from .base import SynthRequest, SynthResult, run_generator


def generate(request: SynthRequest) -> SynthResult:
    photos = [load_image(p) for p in request.photos]

    def make_one(rng: random.Random, index: int):
        source = index % len(photos)
        image, params = paper_augment(photos[source], rng, request.size)
        return image, {"source": request.photos[source].name, **params}

    return run_generator(request, "augment", make_one)
