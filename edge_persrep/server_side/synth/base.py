"""The synthesis interface every generator plugs into (augment, cutpaste; DreamBooth later).

A generator reads a `SynthRequest` and writes positives into `out_dir/positives/` plus a manifest
(`out_dir/manifest.json`) that records, per image, its file, source and parameters. Images already
listed in the manifest and present on disk are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

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


@dataclass
class SynthResult:
    positives: list[Path]
    manifest: Path


def load_masks(request: SynthRequest) -> list[np.ndarray]:
    if not request.masks:
        raise EdgePersrepError("this generator needs object masks: pass --masks DIR (one PNG per photo, white = object)")
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


def run_generator(request: SynthRequest, name: str, make_one: Callable[[random.Random, int], tuple[Image.Image, dict]]) -> SynthResult:
    """Shared driver: per-image seeds (seed, index), resume from the manifest, atomic writes, progress."""
    out = request.out_dir / "positives"
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = request.out_dir / "manifest.json"
    manifest = _read_manifest(manifest_path, name, request)
    done = {e["file"] for e in manifest["images"] if (request.out_dir / e["file"]).is_file()}
    manifest["images"] = [e for e in manifest["images"] if e["file"] in done]
    for index in tqdm(range(request.count), desc=f"synth {name}", unit="img", leave=False):
        rel = f"positives/{index:05d}.jpg"
        if rel in done:
            continue
        image, params = make_one(random.Random(f"{request.seed}:{index}"), index)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        atomic_write_bytes(request.out_dir / rel, buffer.getvalue())
        manifest["images"].append({"file": rel, "seed": f"{request.seed}:{index}", **params})
        if index % 50 == 49:
            atomic_write_json(manifest_path, manifest)
    manifest["images"].sort(key=lambda e: e["file"])
    atomic_write_json(manifest_path, manifest)
    return SynthResult([request.out_dir / e["file"] for e in manifest["images"][: request.count]], manifest_path)


def _read_manifest(path: Path, name: str, request: SynthRequest) -> dict:
    header = {"generator": name, "category": request.category, "seed": request.seed, "size": request.size,
              "photos": [p.name for p in request.photos]}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EdgePersrepError(f"{path}: synthesis manifest is corrupt ({exc}); delete {path.parent} to start over") from exc
        if {k: manifest.get(k) for k in header} == header and isinstance(manifest.get("images"), list):
            return manifest
        raise EdgePersrepError(f"{path}: made with other settings ({ {k: manifest.get(k) for k in header} }); "
                               f"use a new output directory or delete {path.parent}")
    return {**header, "images": []}
