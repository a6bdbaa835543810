"""The runtime's resize gives the same pixels under every Pillow, on any number of threads, and as
the browser port (examples/web/edge-persrep.js) does."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_persrep.runtime.images import resample, resize_to_input

WEB = Path(__file__).resolve().parents[1] / "examples" / "web"
# (width, height, size): wide, square, tall enough that Pillow 13 runs its y pass first in one call
# ((h - size) > 2 (w - size)), upscaled, and odd sizes that make unequal bands
SHAPES = [(640, 360, 320), (384, 384, 320), (360, 1000, 320), (120, 400, 64), (97, 31, 320), (1001, 203, 224)]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth content plus noise: the filter's every tap matters, and rounding shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(x[..., None] / 7.0 + np.arange(3)) * np.cos(y[..., None] / 11.0)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _two_one_axis_calls(image: Image.Image, width: int, height: int, kind: int) -> np.ndarray:
    """The oracle: a resize along x alone, then along y alone (a one-axis resize has one pass)."""
    return np.asarray(image.resize((width, image.height), kind).resize((width, height), kind))


@pytest.mark.parametrize("width,height,size", SHAPES)
def test_resize_is_an_x_pass_then_a_y_pass_on_any_number_of_threads(width, height, size):
    photo = _photo(width, height, seed=width)
    expected = _two_one_axis_calls(photo, size, size, Image.BICUBIC)
    assert np.array_equal(resize_to_input(photo, size), expected)
    for workers in (1, 2, 3, 7):
        assert np.array_equal(np.asarray(resample(photo, size, size, Image.BICUBIC, workers)), expected), workers
    if (height - size) <= 2 * (width - size):  # every Pillow runs x first here: one call agrees
        assert np.array_equal(np.asarray(photo.resize((size, size), Image.BICUBIC)), expected)


def test_resize_to_the_same_size_is_a_copy():
    photo = _photo(64, 64, seed=0)
    out = resample(photo, 64, 64, Image.BICUBIC, workers=2)
    assert out is not photo and np.array_equal(np.asarray(out), np.asarray(photo))


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.parametrize("kind,name", [(Image.BICUBIC, "bicubic"), (Image.BILINEAR, "bilinear")])
def test_the_browser_port_resizes_to_the_same_pixels(tmp_path, kind, name):
    """edge-persrep.js's `resize` (the model's input: bicubic; the mask: bilinear) in Node, byte for
    byte against the runtime, on the shapes above (the tall one included)."""
    cases = []
    for k, (width, height, size) in enumerate(SHAPES):
        photo = _photo(width, height, seed=k)
        (tmp_path / f"{k}.rgb").write_bytes(photo.tobytes())
        cases.append({"file": str(tmp_path / f"{k}.rgb"), "width": width, "height": height, "size": size})
    script = tmp_path / "resize.mjs"
    script.write_text(
        f'import {{ readFileSync, writeFileSync }} from "node:fs";\n'
        f'import {{ resize }} from "{(WEB / "edge-persrep.js").as_uri()}";\n'
        f"for (const c of {json.dumps(cases)}) {{\n"
        f"  const out = resize(new Uint8Array(readFileSync(c.file)), c.width, c.height, 3, c.size, c.size, "
        f'"{name}", true);\n'
        f'  writeFileSync(c.file + ".out", out);\n'
        f"}}\n")
    done = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for k, (width, height, size) in enumerate(SHAPES):
        got = np.frombuffer((tmp_path / f"{k}.rgb.out").read_bytes(), np.uint8).reshape(size, size, 3)
        expected = np.asarray(resample(_photo(width, height, seed=k), size, size, kind, workers=2))
        assert np.array_equal(got, expected), (width, height, size, np.abs(got.astype(int) - expected).max())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_still_resizes_in_bands():
    """A process forked after a resize (multiprocessing, DataLoader workers) has no pool threads;
    its resize must make its own, not wait forever on its parent's."""
    import multiprocessing

    photo = _photo(640, 480, seed=1)
    expected = resize_to_input(photo, 320)  # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(resize_to_input, (photo, 320)).get(timeout=60)
    assert np.array_equal(got, expected)
