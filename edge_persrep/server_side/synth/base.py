"""The synthesis interface every generator plugs into (augment, cutpaste, the DreamBooth family).

A generator reads a `SynthRequest` and writes positives into `out_dir/positives/` plus a manifest
(`out_dir/manifest.json`; other image sets, such as generated negatives, get their own folder and
manifest) that records, per image, its file, source and parameters. Images already
listed in the manifest and present on disk are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...runtime.errors import EdgePersrepError, ImageError
from ...runtime.files import atomic_write_bytes, atomic_write_json
from ...runtime.images import load_image


@dataclass
class SynthRequest:
    photos: list[Path]
    category: str
    out_dir: Path
    count: int = 450  # paper: ~450 positives per object
    seed: int = 0
    size: int = 256  # stored side; training crops from it (paper: RandomResizedCrop(224))
    masks: list[Path] | None = None  # one binary mask per photo, same size (white = object)
    backgrounds: list[Path] = field(default_factory=list)
    diffusion: object | None = None  # DiffusionOptions for the Stable Diffusion generators


@dataclass
class SynthResult:
    positives: list[Path]
    manifest: Path
    negatives: list[Path] = field(default_factory=list)  # generated negatives (DreamBooth methods)


DIFFUSION_METHODS = ("dreambooth", "masked-dreambooth", "combined", "ip-adapter")  # they run Stable Diffusion
METHODS_NEEDING_MASKS = ("cutpaste", "masked-dreambooth", "combined")
# without --masks, `personalize` finds them (server_side.object_masks)
METHODS_FINDING_MASKS = ("context", "context-sparse")


def load_masks(request: SynthRequest) -> list[np.ndarray]:
    if not request.masks:
        raise EdgePersrepError("this generator needs object masks: pass --masks DIR (one PNG per photo, "
                               "white = object)")
    return read_masks(request.photos, request.masks)


def read_masks(photos: list[Path], mask_paths: list[Path]) -> list[np.ndarray]:
    """One bool mask per photo; refuses a missing, mis-sized, empty or non-binary mask."""
    if len(mask_paths) != len(photos):
        raise EdgePersrepError(f"{len(mask_paths)} masks for {len(photos)} photos; give one mask per photo")
    masks = []
    for photo_path, mask_path in zip(photos, mask_paths):
        photo = load_image(photo_path)
        try:
            with Image.open(mask_path) as im:
                arr = np.asarray(im.convert("L"))
        except (OSError, ValueError) as exc:
            raise ImageError(f"{mask_path}: not a readable mask ({exc})") from exc
        if arr.shape != (photo.height, photo.width):
            raise ImageError(f"{mask_path}: mask is {arr.shape[1]}x{arr.shape[0]}, photo {photo_path} is "
                             f"{photo.width}x{photo.height}; masks must match their photos")
        if np.count_nonzero((arr > 10) & (arr < 245)) > 0.01 * arr.size:
            raise ImageError(f"{mask_path}: mask is not binary (use black background, white object)")
        mask = arr >= 128
        if not mask.any():
            raise ImageError(f"{mask_path}: mask is empty; it must mark the object in white")
        masks.append(mask)
    return masks


def match_masks(photos: list[Path], mask_dir: Path) -> list[Path]:
    """Masks named like their photos (`01.jpg` -> `01.png`) in `mask_dir`."""
    found = []
    for photo in photos:
        candidates = [mask_dir / f"{photo.stem}{s}" for s in (".png", ".jpg", ".bmp")]
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            raise ImageError(f"{mask_dir}: no mask for photo {photo.name} (expected {photo.stem}.png)")
        found.append(mask)
    return found


def image_seed(seed: int | str, index: int) -> int:
    """The seed of image `index`: the same whatever the batch, the shard or the order of generation."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:7], "big")


def shard_indices(count: int, rank: int, world: int) -> range:
    """The images process `rank` of `world` makes: every world-th index from its rank, so shards
    never overlap and together cover 0..count-1."""
    if not 0 <= rank < world:
        raise EdgePersrepError(f"process rank {rank} is outside 0..{world - 1}")
    return range(rank, count, world)


def run_generator(request: SynthRequest, name: str,
                  make_one: Callable[[random.Random, int], tuple[Image.Image, dict]] | None = None, *,
                  make_batch: Callable[[list[int]], list[tuple[Image.Image, dict]]] | None = None,
                  batch_size: int = 1, subdir: str = "positives", manifest_name: str = "manifest.json",
                  settings: dict | None = None, shard: tuple[int, int] = (0, 1)) -> SynthResult:
    """Shared driver: per-image seeds, resume from the manifest, atomic writes, progress.

    `make_one(rng, index)` makes one image from an RNG seeded by (seed, index); `make_batch(indices)`
    makes several at once (diffusion), seeding each image itself with `image_seed`. With
    `shard=(rank, world)` this process makes only its share and keeps its own part manifest;
    `merge_shards` joins the parts when every process is done.
    """
    rank, world = shard
    out = request.out_dir / subdir
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = request.out_dir / (manifest_name if world == 1 else _part_name(manifest_name, rank, world))
    manifest = _read_manifest(manifest_path, name, request, settings)
    done = {e["file"] for e in manifest["images"] if (request.out_dir / e["file"]).is_file()}
    if world > 1:  # a single-process run made earlier counts too
        main = request.out_dir / manifest_name
        if main.is_file():
            earlier = _read_manifest(main, name, request, settings)["images"]
            manifest["images"] += [e for e in earlier
                                   if e["file"] not in done and (request.out_dir / e["file"]).is_file()]
            done |= {e["file"] for e in manifest["images"]}
    manifest["images"] = [e for e in manifest["images"] if e["file"] in done]
    mine = shard_indices(request.count, rank, world)
    todo = [i for i in mine if image_file(subdir, i) not in done]
    unsaved = 0
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"synth {name} {subdir}", unit="img",
              leave=False) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            if make_batch is not None:
                made = make_batch(chunk)
            else:
                made = [make_one(random.Random(f"{request.seed}:{i}"), i) for i in chunk]
            for index, (image, params) in zip(chunk, made):
                rel = image_file(subdir, index)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=92)
                atomic_write_bytes(request.out_dir / rel, buffer.getvalue())
                manifest["images"].append({"file": rel, "seed": f"{request.seed}:{index}", **params})
                unsaved += 1
            bar.update(len(chunk))
            if make_batch is not None or unsaved >= 50:  # a diffusion batch is worth saving at once
                atomic_write_json(manifest_path, manifest)
                unsaved = 0
    manifest["images"].sort(key=lambda e: e["file"])
    if todo or not manifest_path.is_file():  # a finished set is left as it is (a rerun redoes nothing)
        atomic_write_json(manifest_path, manifest)
    return _result(request, manifest, {image_file(subdir, i) for i in mine}, manifest_path)


def image_file(subdir: str, index: int) -> str:
    """Where image `index` of a set lives, relative to the output directory (as the manifest names it)."""
    return f"{subdir}/{index:05d}.jpg"


def _result(request: SynthRequest, manifest: dict, files: set[str], manifest_path: Path) -> SynthResult:
    return SynthResult([request.out_dir / e["file"] for e in manifest["images"] if e["file"] in files], manifest_path)


def score_key(path: Path) -> str:
    """How a generated image is named in the manifest and the filter's report: `positives/00012.jpg`."""
    return f"{path.parent.name}/{path.name}"


def in_context_boxes(result: SynthResult) -> list[tuple[int, int, int, int] | None]:
    """Per positive, the box of the object pasted in context (synth `context`, kind "in_context" in
    the manifest), else None: training scores those inside their box (server_side.contrastive)."""
    manifest = json.loads(result.manifest.read_text())  # the diffusion methods' is a summary: no images
    entries = {e["file"]: e for e in manifest.get("images", [])}
    boxes = []
    for path in result.positives:
        entry = entries.get(score_key(path), {})
        boxes.append(tuple(entry["box"]) if entry.get("kind") == "in_context" else None)
    return boxes


def _part_name(manifest_name: str, rank: int, world: int) -> str:
    stem = manifest_name.removesuffix(".json")
    return f"{stem}.part{rank}-of-{world}.json"


def merge_shards(request: SynthRequest, name: str, world: int, subdir: str = "positives",
                 manifest_name: str = "manifest.json", settings: dict | None = None) -> SynthResult:
    """Join the part manifests of a sharded run into one (an image listed twice counts once),
    refusing gaps."""
    entries: dict[str, dict] = {}
    main = request.out_dir / manifest_name
    parts = [request.out_dir / _part_name(manifest_name, r, world) for r in range(world)]
    for path in [main, *parts]:
        if path.is_file():
            for e in _read_manifest(path, name, request, settings)["images"]:
                entries.setdefault(e["file"], e)
    expected = {image_file(subdir, i) for i in range(request.count)}
    missing = sorted(expected - {f for f in entries if (request.out_dir / f).is_file()})
    if missing:
        raise EdgePersrepError(f"{request.out_dir}: sharded generation left {len(missing)} image(s) missing "
                               f"(first: {missing[0]}); rerun the same command to finish them")
    manifest = {**_header(name, request, settings), "images": sorted(entries.values(), key=lambda e: e["file"])}
    atomic_write_json(main, manifest)
    for path in parts:
        path.unlink(missing_ok=True)
    return _result(request, manifest, expected, main)


def _header(name: str, request: SynthRequest, settings: dict | None) -> dict:
    header = {"generator": name, "category": request.category, "seed": request.seed, "size": request.size,
              "photos": [p.name for p in request.photos]}
    return {**header, **json.loads(json.dumps(settings or {}))}


def _read_manifest(path: Path, name: str, request: SynthRequest, settings: dict | None = None) -> dict:
    header = _header(name, request, settings)
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EdgePersrepError(f"{path}: synthesis manifest is corrupt ({exc}); delete {path.parent} to "
                                   "start over") from exc
        if {k: manifest.get(k) for k in header} == header and isinstance(manifest.get("images"), list):
            return manifest
        raise EdgePersrepError(f"{path}: made with other settings ({ {k: manifest.get(k) for k in header} }); "
                               f"use a new output directory or delete {path.parent}")
    return {**header, "images": []}
