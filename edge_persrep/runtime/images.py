"""Reading photos the way every part of the package must: EXIF-rotated, RGB, size-capped."""

from __future__ import annotations

import mimetypes
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif")
HEIF_SUFFIXES = (".heic", ".heif")  # iPhone photos: read with the pillow-heif plugin when installed
MAX_PIXELS = 50_000_000  # ~ a 8K photo; larger declared sizes are refused before decoding (PNG bombs)
MIN_SIDE = 8  # below this there is nothing to recognise


class SkippedFilesWarning(UserWarning):
    """Files in a folder of photos that are not photos (videos, documents); the CLI prints it as a note."""


def _heif_support(path: Path) -> None:
    """Register pillow-heif's opener for a HEIC/HEIF photo, or say how to get it."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError as exc:
        raise ImageError(f"{path}: HEIC/HEIF photos need the pillow-heif package (pip install pillow-heif, or "
                         "the server extra); or export the photo as JPEG") from exc
    register_heif_opener()


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open a photo as an upright 8-bit RGB PIL image, or raise ImageError naming the file."""
    path = Path(path)
    if path.suffix.lower() in HEIF_SUFFIXES:
        _heif_support(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: declares {im.width}x{im.height} pixels, more than the "
                        f"{MAX_PIXELS:,} allowed; downscale it first"
                    )
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: image is too large to decode safely ({exc}); downscale it first") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path}: is a directory, expected an image file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc}); re-export it as JPEG or PNG") from exc
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"{path}: image is only {rgb.width}x{rgb.height} pixels; use a real photo")
    return rgb


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        arr = np.asarray(im, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        im = Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    im = im.convert("RGB")
    im.load()
    return im


def list_images(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (with their subfolders, sorted; hidden ones skipped) into image
    paths; refuse an empty result. Videos and images of other formats in a folder are skipped with a
    SkippedFilesWarning that names them (documents, such as a README, silently)."""
    paths: list[Path] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise ImageError(f"{item}: directory has no images ({', '.join(IMAGE_SUFFIXES)})")
            skipped = [str(p.relative_to(item)) for p in files
                       if p.suffix.lower() not in IMAGE_SUFFIXES and _is_media(p)]
            if skipped:
                shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
                warnings.warn(f"{item}: {len(found)} photos; skipped {len(skipped)} other files ({shown})",
                              SkippedFilesWarning, stacklevel=2)
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise ImageError(f"{item}: no such file or directory")
    if not paths:
        raise ImageError("no images given")
    return paths


def _is_media(path: Path) -> bool:
    kind = mimetypes.guess_type(path.name)[0] or ""
    return kind.startswith(("image/", "video/"))


def refuse_duplicates(paths: Iterable[str | os.PathLike]) -> None:
    """Two reference photos with identical bytes add nothing but a false sense of coverage."""
    from .files import sha256_file

    seen: dict[str, Path] = {}
    for path in map(Path, paths):
        digest = sha256_file(path)
        if digest in seen:
            raise ImageError(f"{path}: the same photo as {seen[digest]}; give distinct photos of the object")
        seen[digest] = path


def resize_to_input(image: Image.Image, size: int) -> np.ndarray:
    """The runtime's only resize: the whole image stretched to size x size (nothing cropped, so a
    box on the model's grid maps back to the photo by scaling x and y). Returns uint8 HWC RGB."""
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def input_batch(paths: Sequence[str | os.PathLike], size: int) -> np.ndarray:
    """Photos as one uint8 model-input batch [N, size, size, 3] (N may be 0)."""
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_to_input(load_image(p), size) for p in paths])


def compose_grid(photos: list[Image.Image], n: int, side: int) -> Image.Image:
    """An n x n scene of `side` px: photo k (stretched) in cell k, row by row; cells past the
    photos stay grey. Enrolment calibrates `present` on such scenes; the benchmarks test on them."""
    scene = Image.new("RGB", (side, side), (128, 128, 128))
    cell = side // n
    for k, photo in enumerate(photos[: n * n]):
        scene.paste(photo.convert("RGB").resize((cell, cell), Image.BICUBIC), ((k % n) * cell, (k // n) * cell))
    return scene
