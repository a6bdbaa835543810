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
    """The runtime's only resize of a photo: the whole image stretched to size x size (nothing
    cropped, so a box on the model's grid maps back to the photo by scaling x and y), bicubic,
    with `resample`'s fixed pass order, on the runtime's threads. Returns uint8 HWC RGB."""
    workers = resize_workers(max(image.width * image.height, size * size))
    return np.asarray(resample(image, size, size, Image.BICUBIC, workers), dtype=np.uint8)


def resample(image: Image.Image, width: int, height: int, kind: int, workers: int = 1) -> Image.Image:
    """Pillow's resampling filter `kind`, as two explicit passes: along x, then along y.

    One `Image.resize` call is not the same everywhere: Pillow 13 runs the y pass first when the
    height shrinks more than twice as much as the width (a portrait video frame, 1080x1920), and
    the pass order moves pixels by a few levels, so the model's input would depend on the
    installed Pillow and differ from the browser port's (examples/web, x first, as Pillow < 13
    always did). A one-axis resize has one pass and no order, so these two calls give the same
    pixels under every Pillow. With `workers` > 1 each pass is cut into that many bands, run on
    threads (Pillow releases the GIL while it resamples): a row of the x pass and a column of the
    y pass depend on no other row or column, so the bands give the same pixels as one call."""
    if image.size == (width, height):
        return image.copy()
    if image.width != width:
        image = _pass_in_bands(image, (width, image.height), kind, workers, along_x=True)
    if image.height != height:
        image = _pass_in_bands(image, (width, height), kind, workers, along_x=False)
    return image


BAND_MIN_PIXELS = 65_536  # below this a photo is resized on one thread: the hand-offs cost more than they save
_band_pool = None  # threads that run the bands, made on first use


def _forget_band_pool() -> None:
    """In a forked child the pool's threads do not exist, yet the pool would think them idle and
    wait on them forever: the child makes its own on first use."""
    global _band_pool
    _band_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_band_pool)


def resize_workers(pixels: int) -> int:
    """Threads for a resize whose larger image (input or output) has `pixels` pixels: the runtime's
    thread count (threads.set_threads, else one per core), one for small images."""
    from .threads import threads_or_cores

    return 1 if pixels < BAND_MIN_PIXELS else threads_or_cores()


def _pass_in_bands(image: Image.Image, size: tuple[int, int], kind: int, workers: int, along_x: bool) -> Image.Image:
    """One pass of `resample` (along x: rows in bands; along y: columns in bands)."""
    length = image.height if along_x else image.width
    parts = max(1, min(workers, length))
    if parts == 1:
        return image.resize(size, kind)
    cuts = [length * k // parts for k in range(parts + 1)]

    def band(k: int) -> Image.Image:
        a, b = cuts[k], cuts[k + 1]
        if along_x:
            return image.crop((0, a, image.width, b)).resize((size[0], b - a), kind)
        return image.crop((a, 0, b, image.height)).resize((b - a, size[1]), kind)

    global _band_pool
    if _band_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _band_pool = ThreadPoolExecutor(thread_name_prefix="edge-persrep-resize")
    others = [_band_pool.submit(band, k) for k in range(1, parts)]
    bands = [band(0)] + [f.result() for f in others]  # the calling thread does the first band
    out = Image.new(image.mode, size)
    for k, piece in enumerate(bands):
        out.paste(piece, (0, cuts[k]) if along_x else (cuts[k], 0))
    return out


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
