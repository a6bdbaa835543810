"""A procedural instance-level dataset with exact masks and boxes, in the PODS-style layout.

Categories (mug, ball, box, flag) fix an object's silhouette and base colour; instances of a
category differ only in fine details: surface pattern (stripes, dots, checks, plain), a logo's
shape (star, triangle, ring, bar) and the logo's colour. Telling them apart is the instance-level
problem personalization is for. Each object gets 3 training scenes (centred, upright, large) and
test scenes in four splits (the paper's PODS splits):
    in_distribution   same framing as training, new backgrounds
    pose              rotated up to 45 deg, flipped, 25-60% of the frame
    distractors       training framing plus 2 other instances of the same category in the scene
    both              pose and distractors
Layout (also what `--layout pods` reads):
    classes.txt                        object,category per line
    <object>/train/NN.png              training photos;  <object>/masks/train/NN.png their masks
    <object>/test/<split>/NN.png       test scenes
    annotations.json                   per test image: every instance in it with box and mask file
Deterministic from the seed: the same seed writes the same bytes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..runtime.dense import mask_box
from ..runtime.files import atomic_write_json

SIDE = 256
SPLITS = ("in_distribution", "pose", "distractors", "both")
CATEGORIES = {"mug": (200, 60, 50), "ball": (40, 110, 200), "box": (210, 170, 60), "flag": (60, 160, 90)}
PATTERNS = ("stripes", "dots", "checks", "plain")
LOGOS = ("star", "triangle", "ring", "bar")
LOGO_COLOURS = ((250, 250, 250), (20, 20, 20), (250, 220, 0), (150, 0, 150))


@dataclass(frozen=True)
class Instance:
    name: str
    category: str
    pattern: str
    logo: str
    logo_colour: tuple[int, int, int]


def make_instances(n_objects: int, seed: int) -> list[Instance]:
    """n objects spread over the categories, no two alike (same-category ones share base colour)."""
    rng = random.Random(seed)
    cats = list(CATEGORIES)
    combos = {c: rng.sample([(p, g, k) for p in PATTERNS for g in LOGOS for k in range(len(LOGO_COLOURS))], 20)
              for c in cats}
    out = []
    for i in range(n_objects):
        cat = cats[i % len(cats)]
        pattern, logo, colour = combos[cat][i // len(cats)]
        out.append(Instance(f"{cat}{i // len(cats) + 1}", cat, pattern, logo, LOGO_COLOURS[colour]))
    return out


def _silhouette(category: str, w: int, h: int) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if category == "mug":
        d.rounded_rectangle((w * 0.1, h * 0.1, w * 0.75, h * 0.95), radius=w // 10, fill=255)
        d.ellipse((w * 0.62, h * 0.3, w * 0.98, h * 0.7), outline=255, width=max(2, w // 14))
    elif category == "ball":
        d.ellipse((w * 0.05, h * 0.05, w * 0.95, h * 0.95), fill=255)
    elif category == "box":
        d.rectangle((w * 0.08, h * 0.25, w * 0.92, h * 0.95), fill=255)
        d.polygon([(w * 0.08, h * 0.25), (w * 0.3, h * 0.05), (w * 0.98, h * 0.05), (w * 0.92, h * 0.25)], fill=255)
    else:  # flag on a pole
        d.rectangle((w * 0.05, h * 0.05, w * 0.12, h * 0.98), fill=255)
        d.rectangle((w * 0.12, h * 0.08, w * 0.95, h * 0.6), fill=255)
    return m


def render_object(inst: Instance, size: int) -> tuple[Image.Image, Image.Image]:
    """(RGB, mask) of one instance, size x size, upright."""
    w = h = size
    base = CATEGORIES[inst.category]
    tex = Image.new("RGB", (w, h), base)
    d = ImageDraw.Draw(tex)
    darker = tuple(int(c * 0.55) for c in base)
    step = max(4, size // 8)
    if inst.pattern == "stripes":
        for x in range(0, w, step):
            d.rectangle((x, 0, x + step // 2, h), fill=darker)
    elif inst.pattern == "dots":
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                d.ellipse((x - step // 4, y - step // 4, x + step // 4, y + step // 4), fill=darker)
    elif inst.pattern == "checks":
        for y in range(0, h, step):
            for x in range((y // step % 2) * step, w, 2 * step):
                d.rectangle((x, y, x + step, y + step), fill=darker)
    cx, cy, r = w * 0.42, h * 0.5, size * 0.16
    if inst.logo == "star":
        pts = [(cx + r * (1 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5 - math.pi / 2),
                cy + r * (1 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5 - math.pi / 2)) for k in range(10)]
        d.polygon(pts, fill=inst.logo_colour)
    elif inst.logo == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=inst.logo_colour)
    elif inst.logo == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=inst.logo_colour, width=max(2, size // 20))
    else:
        d.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=inst.logo_colour)
    return tex, _silhouette(inst.category, w, h)


def background(rng: random.Random, side: int = SIDE) -> Image.Image:
    """A room-ish scene: a smooth colour field, a floor band and a few muted furniture blocks."""
    arr = np.random.default_rng(rng.randrange(2**32)).integers(60, 200, (3, 3, 3), dtype=np.uint8)
    bg = Image.fromarray(arr).resize((side, side), Image.BICUBIC)
    d = ImageDraw.Draw(bg)
    floor = tuple(rng.randrange(80, 160) for _ in range(3))
    d.rectangle((0, int(side * rng.uniform(0.6, 0.8)), side, side), fill=floor)
    for _ in range(rng.randint(1, 3)):
        x, y = rng.randrange(side), rng.randrange(side)
        colour = tuple(rng.randrange(70, 180) for _ in range(3))
        d.rectangle((x, y, x + rng.randint(20, 80), y + rng.randint(20, 80)), fill=colour)
    return bg.filter(ImageFilter.GaussianBlur(1))


def place(scene: Image.Image, inst: Instance, rng: random.Random, scale: float, angle: float, flip: bool,
          avoid: list[tuple[int, int, int, int]] = ()) -> np.ndarray:
    """Paste an instance into `scene` (in place); returns its exact bool mask."""
    size = max(16, int(SIDE * scale))
    tex, mask = render_object(inst, size)
    if flip:
        tex, mask = tex.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    tex = tex.rotate(angle, resample=Image.BILINEAR, expand=True)
    mask = mask.rotate(angle, resample=Image.NEAREST, expand=True)
    for _ in range(50):  # a place overlapping earlier objects as little as possible
        x, y = rng.randint(0, max(0, SIDE - tex.width)), rng.randint(0, max(0, SIDE - tex.height))
        if all(x + tex.width <= a or a2 <= x or y + tex.height <= b or b2 <= y for a, b, a2, b2 in avoid):
            break
    scene.paste(tex, (x, y), mask)
    full = np.zeros((SIDE, SIDE), bool)
    m = np.asarray(mask) > 127
    h, w = min(m.shape[0], SIDE - y), min(m.shape[1], SIDE - x)
    full[y:y + h, x:x + w] = m[:h, :w]
    return full


def make_dataset(out: Path, n_objects: int = 8, seed: int = 0, n_train: int = 3, n_test: int = 3) -> Path:
    rng = random.Random(seed)
    instances = make_instances(n_objects, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{i.name},{i.category}\n" for i in instances))
    annotations = []
    for inst in instances:
        for k in range(n_train):
            scene = background(rng)
            mask = place(scene, inst, rng, rng.uniform(0.5, 0.65), rng.uniform(-8, 8), False)
            _save(scene, mask, out / inst.name / "train" / f"{k:02d}.png",
                  out / inst.name / "masks" / "train" / f"{k:02d}.png")
        for split in SPLITS:
            posed, crowded = split in ("pose", "both"), split in ("distractors", "both")
            for k in range(n_test):
                scene = background(rng)
                scale = rng.uniform(0.25, 0.6) if posed else rng.uniform(0.45, 0.6)
                angle = rng.uniform(-45, 45) if posed else rng.uniform(-8, 8)
                rel = f"{inst.name}/test/{split}/{k:02d}.png"
                main = place(scene, inst, rng, scale if not crowded else min(scale, 0.4), angle,
                             posed and rng.random() < 0.5)
                instances_in = {inst.name: main}
                if crowded:
                    look_alikes = [o for o in instances if o.category == inst.category and o.name != inst.name]
                    for other in rng.sample(look_alikes, min(2, len(look_alikes))):
                        boxes = [mask_box(m) for m in instances_in.values()]
                        m = place(scene, other, rng, rng.uniform(0.25, 0.4), rng.uniform(-30, 30), False, boxes)
                        for name in instances_in:  # the later paste hides what it covers
                            instances_in[name] &= ~m
                        instances_in[other.name] = m
                scene.save(_mk(out / rel))
                entry = {"file": rel, "object": inst.name, "split": split, "instances": {}}
                for name, m in instances_in.items():
                    if m.sum() < 30:
                        continue  # (almost) entirely hidden: not annotated
                    mask_rel = f"{inst.name}/masks/test/{split}/{k:02d}_{name}.png"
                    Image.fromarray(m.astype(np.uint8) * 255).save(_mk(out / mask_rel))
                    entry["instances"][name] = {"box": list(mask_box(m)), "mask": mask_rel}
                annotations.append(entry)
    atomic_write_json(out / "annotations.json", {"seed": seed, "objects": n_objects, "side": SIDE,
                                                 "splits": list(SPLITS), "images": annotations})
    return out


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(scene: Image.Image, mask: np.ndarray, path: Path, mask_path: Path) -> None:
    scene.save(_mk(path))
    Image.fromarray(mask.astype(np.uint8) * 255).save(_mk(mask_path))
