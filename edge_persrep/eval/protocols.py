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
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..runtime.images import compose_grid, load_image
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
            others = [o.name for o in subjects.values() if o.name not in same + [s.name]]
            pool = same if len(same) >= 3 else same + others
            fillers = rng.sample(pool, 3) if len(same) >= 3 else same + rng.sample(pool[len(same):], 3 - len(same))
            cells = [s.name] + fillers
            rng.shuffle(cells)
            half = SIDE // 2
            images = [photo if name == s.name else rng.choice(held[name]) for name in cells]
            boxes = {name: ((i % 2) * half, (i // 2) * half, (i % 2 + 1) * half, (i // 2 + 1) * half)
                     for i, name in enumerate(cells)}
            out.append(TestImage(compose_grid(images, 2, SIDE), set(cells), "collage", source, boxes))
    return out


# --- identity-disjoint protocol (the default of benchmarks/personalization.py) --------------------
SCENE_KINDS = ("photo", "crop", "occlude", "small", "scene2x2", "scene3x3")
SINGLE_KINDS = ("photo", "crop", "occlude")  # show one subject only: retrieval queries


@dataclass(frozen=True)
class IdentitySplit:
    """For one target (or a group of them): the subjects training may see (negatives, enrolment calibration) and the
    ones only the test shows (distractors, retrieval gallery). A user's model never meets the
    neighbour's dog in training; neither does the benchmark's."""

    target: str  # the target's name, or a group's (then `members` names its subjects)
    seen: tuple[str, ...]
    unseen: tuple[str, ...]
    note: str = ""
    members: tuple[str, ...] = ()  # a group of the user's own things (one joint run): every one is a target

    @property
    def targets(self) -> tuple[str, ...]:
        return self.members or (self.target,)


def lookalike_targets(subjects: dict[str, Subject]) -> list[str]:
    """Subjects that share their category with at least one other subject."""
    count: dict[str, int] = {}
    for s in subjects.values():
        count[s.category] = count.get(s.category, 0) + 1
    return [s.name for s in subjects.values() if count[s.category] > 1]


def identity_split(subjects: dict[str, Subject], target: str, seed: int = PROTOCOL_SEED) -> IdentitySplit:
    """Same-category subjects are halved (seen / unseen, at least one unseen), other categories
    too; with a single same-category look-alike it is unseen and training sees other categories only."""
    return group_split(subjects, target, (target,), seed)


def validation_split(subjects: dict[str, Subject], target: str, seed: int = PROTOCOL_SEED) -> IdentitySplit:
    """The test split's *seen* identities halved again as identity_split halves all of them: the
    inner seen half trains and calibrates, the inner unseen half is the validation's distractors
    and gallery. So a rule or recipe chosen on it meets look-alikes its model never trained
    against, as the test's do, and the test's unseen identities appear nowhere. Where the test
    split has no seen look-alike (a category of two), the validation has none either: say so."""
    outer = identity_split(subjects, target, seed)
    inner = identity_split({n: subjects[n] for n in (target, *outer.seen)}, target, seed)
    category = subjects[target].category
    if not any(subjects[n].category == category for n in inner.unseen):
        inner = replace(inner, note=f"no seen {category} to hold out: the validation's distractors are other "
                                    "categories only")
    return inner


def group_split(subjects: dict[str, Subject], name: str, members: Sequence[str],
                seed: int = PROTOCOL_SEED) -> IdentitySplit:
    """identity_split for a user's group of things of one category (e.g. their three dogs): the
    subjects outside the group are halved as for one target; the members are every one a target
    (and each other's look-alikes)."""
    rng = random.Random(f"{seed}:{name}")
    categories = {subjects[m].category for m in members}
    if len(categories) != 1:
        raise ValueError(f"group {name}: members of one category only, got {sorted(categories)}")
    (category,) = categories
    same = sorted(n for n, s in subjects.items() if s.category == category and n not in members)
    other = sorted(n for n, s in subjects.items() if s.category != category)
    rng.shuffle(same)
    rng.shuffle(other)
    k = len(same) // 2
    note = "" if k else (f"only {len(same)} other {category}: training negatives come from other categories only")
    half = len(other) // 2
    return IdentitySplit(name, tuple(sorted(same[:k] + other[:half])), tuple(sorted(same[k:] + other[half:])), note,
                         tuple(members))


def disjoint_test_set(subjects: dict[str, Subject], split: IdentitySplit, n_refs: int = 3,
                      seed: int = PROTOCOL_SEED) -> list[TestImage]:
    """Test images from held-out photos of the target and the unseen subjects only, one of each
    SCENE_KINDS per photo: the photo, a crop, an occlusion, the photo small on another category's
    photo, and 2x2 / 3x3 scenes where the other cells show unseen subjects, same category first.
    `boxes` gives where the photo's subject is (the whole frame for photo/crop/occlude)."""
    rng = random.Random(f"{seed}:{split.target}:test")
    names = split.targets + split.unseen
    held = {n: [load_image(p) for p in subjects[n].photos[n_refs:]] for n in names}
    out: list[TestImage] = []
    for name in names:
        category = subjects[name].category
        same = [n for n in split.unseen if n != name and subjects[n].category == category and held[n]]
        other = [n for n in split.unseen if subjects[n].category != category and held[n]]
        for k, photo in enumerate(held[name]):
            source = f"{name}/{subjects[name].photos[n_refs + k].name}"
            whole = {name: (0, 0, SIDE, SIDE)}
            out.append(TestImage(_square(photo), {name}, "photo", source, whole))
            w, h = photo.size
            area = rng.uniform(0.35, 0.6)
            cw, ch = int(w * area ** 0.5), int(h * area ** 0.5)
            x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
            out.append(TestImage(_square(photo.crop((x0, y0, x0 + cw, y0 + ch))), {name}, "crop", source, whole))
            occluded = _square(photo)
            side = int(SIDE * rng.uniform(0.3, 0.4) ** 0.5)
            bx, by = rng.randint(0, SIDE - side), rng.randint(0, SIDE - side)
            occluded.paste((128, 128, 128), (bx, by, bx + side, by + side))
            out.append(TestImage(occluded, {name}, "occlude", source, whole))
            backdrop_owner = rng.choice(other)
            backdrop = _square(rng.choice(held[backdrop_owner]))
            side = int(SIDE * rng.uniform(0.3, 0.45))
            px, py = rng.randint(0, SIDE - side), rng.randint(0, SIDE - side)
            backdrop.paste(_square(photo, side), (px, py))
            out.append(TestImage(backdrop, {name, backdrop_owner}, "small", source,
                                 {name: (px, py, px + side, py + side)}))
            for n in (2, 3):
                pool = same + rng.sample(other, len(other))
                fillers = pool[: n * n - 1]
                cells = [name] + fillers
                rng.shuffle(cells)
                images = [photo if c == name else rng.choice(held[c]) for c in cells]
                cell = SIDE // n
                boxes = {c: ((i % n) * cell, (i // n) * cell, (i % n + 1) * cell, (i // n + 1) * cell)
                         for i, c in enumerate(cells)}
                out.append(TestImage(compose_grid(images, n, SIDE), set(cells), f"scene{n}x{n}", source, boxes))
    return out


def seen_negatives(subjects: dict[str, Subject], split: IdentitySplit, folder: Path, n_refs: int = 3) -> Path:
    """The `--negatives` folder of a split: the seen subjects' reference photos, all `n_refs` of each
    one of the targets' category, the first of each other one."""
    category = subjects[split.targets[0]].category
    return write_negatives(folder, {n: subjects[n].photos[:n_refs if subjects[n].category == category else 1]
                                    for n in split.seen})


def other_category_backgrounds(subjects: dict[str, Subject], split: IdentitySplit, folder: Path) -> Path:
    """Backgrounds for pasting the target onto (`personalize --backgrounds`): the photos of
    `seen_negatives` whose subjects are of another category than the target's, so that no pasted
    positive shows a look-alike (and nothing is used that the negatives do not already hold)."""
    category = subjects[split.targets[0]].category
    return write_negatives(folder, {n: subjects[n].photos[:1] for n in split.seen if subjects[n].category != category})


def write_negatives(folder: Path, photos: dict[str, Sequence[Path]]) -> Path:
    """A `--negatives` folder: each subject's photos copied as NAME_photo (how `personalize` knows
    their identities), made complete or not at all."""
    return _write_folder(folder, {f"{name}_{path.name}": path for name, paths in photos.items() for path in paths})


def reference_folder(subjects: dict[str, Subject], name: str, folder: Path, n_refs: int = 3) -> Path:
    """A folder of the subject's first `n_refs` photos (what `personalize --object NAME=DIR` points at)."""
    return _write_folder(folder, {path.name: path for path in subjects[name].photos[:n_refs]})


def _write_folder(folder: Path, files: dict[str, Path]) -> Path:
    """Copy `files` (name in the folder -> source) into `folder`, complete or not at all (written
    beside, then renamed); a folder already there is kept as it is."""
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, path in files.items():
            shutil.copy(path, tmp / name)
        tmp.rename(folder)
    return folder
