"""How long the runtime's resize of a photo to the model's input takes, by photo size, against one
`Image.resize` call (what the runtime did before 2026-12-06).

    python benchmarks/resize.py [--size 320] [--out runs/resize.json]

Three ways, timed in one interleaved loop (each iteration runs all three on the same photo, so a
noisy moment of a shared machine meets all of them; each goes first in turn), median ms:
    one call         Pillow's `Image.resize` (Pillow 13 runs the y pass first for tall photos)
    two passes       runtime.images.resample on one thread: along x, then along y
    runtime          runtime.images.resize_to_input: the two passes cut into bands on the cores
Photo sizes: the example photo (384 px, what `edge-persrep bench` times), a portrait video frame
(1080x1920) and a 12-megapixel photo (4032x3024), the last two stretched from the example photo.
Prints a table and writes JSON. Run it alone: it measures the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edge_persrep.runtime.images import load_image, resample, resize_to_input, resize_workers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "images" / "dog_heldout" / "03.jpg"
SHAPES = {"384x384 (example)": None, "1080x1920 (portrait video frame)": (1080, 1920),
          "4032x3024 (12 MP photo)": (4032, 3024)}
LOOPS = {"384x384 (example)": 1500, "1080x1920 (portrait video frame)": 60, "4032x3024 (12 MP photo)": 15}


def time_ways(photo: Image.Image, size: int, loops: int, warmup: int = 5) -> dict[str, float]:
    ways = {"one call": lambda: np.asarray(photo.resize((size, size), Image.BICUBIC)),
            "two passes": lambda: np.asarray(resample(photo, size, size, Image.BICUBIC)),
            "runtime": lambda: resize_to_input(photo, size)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for i in range(warmup + loops):
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:  # each way goes first in turn
            way = ways[name]
            start = time.perf_counter()
            way()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=320, help="the model's input side (Lite0: 320)")
    ap.add_argument("--out", type=Path, default=Path("runs/resize.json"))
    args = ap.parse_args(argv)
    example = load_image(EXAMPLE)
    rows = {}
    print("| photo | one call ms | two passes, 1 thread ms | runtime ms | threads | one call / runtime |")
    print("|---|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        photo = example if shape is None else example.resize(shape, Image.BICUBIC)
        ms = time_ways(photo, args.size, LOOPS[name])
        workers = resize_workers(max(photo.width * photo.height, args.size ** 2))
        rows[name] = {**{k: round(v, 3) for k, v in ms.items()}, "threads": workers}
        print(f"| {name} | {ms['one call']:.2f} | {ms['two passes']:.2f} | {ms['runtime']:.2f} | {workers} "
              f"| {ms['one call'] / ms['runtime']:.2f}x |")
    report = {"size": args.size, "median_ms": rows, "pillow": Image.__version__,
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
