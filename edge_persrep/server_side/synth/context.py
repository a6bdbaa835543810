"""In-context positives: the object small among other things, as people photograph their things.

One positive in `every` (the last of each run of `every`; `context`: 1 in 2, `context-sparse`: 1 in 8)
cuts the object out of a photo with its mask and pastes it at CONTEXT_SCALE onto a background: the
training negatives by default, so the object appears small, next to or over others of its category
(the scenes "Find it in clutter" is about). The masks are the user's (`--masks`) or, without them,
found from what the photos share (server_side.object_masks): no mask is needed from the user.
The others are `augment`'s (the paper's augmentations of a photo).
The manifest records each pasted object's box: training scores those positives inside the box and
uses what surrounds it as a negative (server_side.contrastive), so the look-alike underneath is
never taught as the object.
"""

from __future__ import annotations

import random

from ...runtime.images import load_image
from ..transforms import paper_augment
from . import cutpaste
from .base import SynthRequest, SynthResult, run_generator

# Pasted object's long side = scale x 60% of the background's side: 18-48%, an object in a 3x3 or
# 2x2 scene cell or somewhat larger (cutpaste's 0.3-1.3 mostly shows it large).
CONTEXT_SCALE = (0.3, 0.8)
EVERY = {"context": 2, "context-sparse": 8}  # one positive in this many is in context


def generate(request: SynthRequest, name: str = "context") -> SynthResult:
    photos = [load_image(p) for p in request.photos]
    objects = cutpaste.cutouts(request)
    every = EVERY[name]

    def make_one(rng: random.Random, index: int):
        source = (index // every) % len(photos)  # each run of `every` from one photo, the photos in turn
        if index % every != every - 1:
            image, params = paper_augment(photos[source], rng, request.size)
            return image, {"source": request.photos[source].name, "kind": "photo", **params}
        image, params = cutpaste.pasted(request, objects[source], rng, CONTEXT_SCALE)
        return image, {"source": request.photos[source].name, "kind": "in_context", **params}

    return run_generator(request, name, make_one)
