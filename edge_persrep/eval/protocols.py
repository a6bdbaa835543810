"""A protocol harder than same-session photos, built from the real DreamBooth photos.

Each subject's first `n_refs` photos are its references (training + prototypes); its remaining
photos are held out and turned, with a fixed seed, into hard test images:
    crop       a tight random crop (35-60% of the area): the object is partly cut off
    occlude    a grey block over 30-40% of the photo
    small      the photo shrunk to 35-55% and pasted on a held-out photo of another category
    collage    a 2x2 grid: the photo in a random cell, three photos of *other subjects of the same
               category* (or of any subject, if the category has too few) in the others
Test images are made only from held-out photos, never from references. Every test image lists
the subjects it shows and, for collages, the cell box of each, so a
classification label is "does this image show subject s" and a collage also scores pointing (the
similarity map's peak falls in s's cell).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image

from ..runtime.images import load_image
from .datasets import Subject

PROTOCOL_SEED = 20250101  # fixed: every run of the benchmark sees the same test images
SIDE = 384


@dataclass
class TestImage:
    image: Image.Image
    subjects: set[str]
    kind: str
    source: str
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


def _square(image: Image.Image, side: int = SIDE) -> Image.Image:
    return image.resize((side, side), Image.BICUBIC)


def hard_test_set(subjects: dict[str, Subject], n_refs: int = 3, seed: int = PROTOCOL_SEED) -> list[TestImage]:
    rng = random.Random(seed)
    held = {s.name: [load_image(p) for p in s.photos[n_refs:]] for s in subjects.values()}
    out: list[TestImage] = []
    for s in subjects.values():
        for k, photo in enumerate(held[s.name]):
            source = f"{s.name}/{s.photos[n_refs + k].name}"
            w, h = photo.size
            area = rng.uniform(0.35, 0.6)
            cw, ch = int(w * area ** 0.5), int(h * area ** 0.5)
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            out.append(TestImage(_square(photo.crop((x0, y0, x0 + cw, y0 + ch))), {s.name}, "crop", source))

            occluded = _square(photo)
            frac = rng.uniform(0.3, 0.4) ** 0.5
            bw, bh = int(SIDE * frac), int(SIDE * frac)
            bx, by = rng.randint(0, SIDE - bw), rng.randint(0, SIDE - bh)
            occluded.paste((128, 128, 128), (bx, by, bx + bw, by + bh))
            out.append(TestImage(occluded, {s.name}, "occlude", source))

            # the background is a held-out photo of another category's subject: it stays visible
            # around the pasted photo, so the scene shows both (never a reference photo: no leak)
            other = rng.choice([o for o in subjects.values() if o.category != s.category])
            background = _square(rng.choice(held[other.name]))
            side = int(SIDE * rng.uniform(0.35, 0.55))
            px, py = rng.randint(0, SIDE - side), rng.randint(0, SIDE - side)
            background.paste(_square(photo, side), (px, py))
            out.append(TestImage(background, {s.name, other.name}, "small", source,
                                 {s.name: (px, py, px + side, py + side)}))

            same = [o.name for o in subjects.values() if o.category == s.category and o.name != s.name]
            pool = same if len(same) >= 3 else same + [o.name for o in subjects.values() if o.name not in same + [s.name]]
            fillers = rng.sample(pool, 3) if len(same) >= 3 else same + rng.sample(pool[len(same):], 3 - len(same))
            cells = [s.name] + fillers
            rng.shuffle(cells)
            collage = Image.new("RGB", (SIDE, SIDE))
            half = SIDE // 2
            boxes = {}
            for i, name in enumerate(cells):
                cx, cy = (i % 2) * half, (i // 2) * half
                cell = photo if name == s.name else rng.choice(held[name])
                collage.paste(_square(cell, half), (cx, cy))
                boxes[name] = (cx, cy, cx + half, cy + half)
            out.append(TestImage(collage, set(cells), "collage", source, boxes))
    return out
