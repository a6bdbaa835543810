"""`edge-persrep find VIDEO` on a 30 s 720p clip: frames/s, peak RSS, and flicker before and after smoothing.

    python benchmarks/video.py [--seconds 30] [--bundle BUNDLE] [--out runs/video.json]

The clip (made here, 1280x720 at 30 fps, H.264): a hand-held camera pans along a row of photos:
dog7, the example dog (held-out photo), dog6 and the cat, with jitter in position and zoom, so the
dog walks into view, stays, and leaves, and look-alikes pass by. Truth per frame: the dog is in
view when at least half of its photo is inside the frame. The bundle (default: the pretrained
Lite0 with the example dog enrolled against the example negatives, as `enroll` does) answers
every frame twice, through the CLI as a user runs it: with smoothing (the default) and with
`--no-smoothing`. Reported per run: total seconds (with the process's start), frames/s from the
first answer to the last (decode, resize, model, scores, box of present objects), peak RSS of
the `find` process and how it moved over the video (first vs last quarter of the samples),
`present` toggles per minute, and the balanced accuracy of `present` against the truth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from edge_persrep.eval.bench import print_and_save
from edge_persrep.runtime import Finder, list_images, load_image
from edge_persrep.runtime.video import toggles_per_minute

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
WIDTH, HEIGHT, RATE = 1280, 720, 30
TILE = 900  # each photo's width in the row


def make_clip(path: Path, seconds: float, seed: int = 0) -> list[bool]:
    """Write the clip; returns the truth (is the dog in view) per frame."""
    import av

    photos = [load_image(EXAMPLES / name) for name in ("heldout_others/dog7_00.jpg", "dog_heldout/03.jpg",
                                                       "heldout_others/dog6_00.jpg", "heldout_others/cat_00.jpg")]
    row = Image.new("RGB", (TILE * len(photos), TILE), (128, 128, 128))
    for k, p in enumerate(photos):
        row.paste(p.resize((TILE, TILE), Image.BICUBIC), (k * TILE, 0))
    rng = np.random.default_rng(seed)
    frames = int(seconds * RATE)
    truth = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for n in range(frames):
            # the camera's centre sweeps the row there and back, with hand-held jitter and zoom
            phase = n / frames
            sweep = 1 - abs(2 * phase - 1)  # 0 -> 1 -> 0
            cx = TILE * 0.5 + sweep * TILE * (len(photos) - 1) + rng.normal(0, 25)
            view_w = TILE * (1.15 + 0.1 * np.sin(n / 20)) + rng.normal(0, 10)
            view_h = view_w * HEIGHT / WIDTH
            cy = TILE / 2 + rng.normal(0, 15)
            box = (cx - view_w / 2, cy - view_h / 2, cx + view_w / 2, cy + view_h / 2)
            frame = row.crop(tuple(int(v) for v in box)).resize((WIDTH, HEIGHT), Image.BILINEAR)
            visible = max(0.0, min(box[2], 2 * TILE) - max(box[0], TILE)) / TILE
            truth.append(visible >= 0.5)
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return truth


def run_find(bundle: Path, clip: Path, smoothing: bool) -> dict:
    """`edge-persrep find BUNDLE CLIP --json` in its own process, its RSS sampled every 0.2 s."""
    cmd = [sys.executable, "-m", "edge_persrep.cli", "find", str(bundle), str(clip), "--json", "--task", "detect"]
    started = time.time()
    proc = subprocess.Popen(cmd + ([] if smoothing else ["--no-smoothing"]), stdout=subprocess.PIPE, text=True)
    samples: list[float] = []

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                samples.append(p.memory_info().rss / 1e6)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines, arrived = [], []
    for line in proc.stdout:
        lines.append(json.loads(line))
        arrived.append(time.time())
    proc.wait()
    sampler.join()
    seconds = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"find failed with exit code {proc.returncode}")
    quarter = max(1, len(samples) // 4)
    steady = (len(lines) - 1) / (arrived[-1] - arrived[0])  # from the first answer on: no start-up, no model load
    return {"frames": len(lines), "seconds": round(seconds, 1), "frames_per_s": round(steady, 1),
            "present": [d["results"][0]["present"] for d in lines],
            "peak_rss_mb": round(max(samples), 1), "rss_first_quarter_mb": round(max(samples[:quarter]), 1),
            "rss_last_quarter_mb": round(max(samples[-quarter:]), 1)}


def balanced_accuracy(decisions: list[bool], truth: list[bool]) -> float:
    d, t = np.asarray(decisions), np.asarray(truth)
    return float(((d & t).sum() / max(1, t.sum()) + (~d & ~t).sum() / max(1, (~t).sum())) / 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--bundle", type=Path, help="a bundle with the example dog enrolled (default: made here)")
    ap.add_argument("--out", type=Path, default=Path("runs/video.json"))
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from edge_persrep.pipeline import export_pretrained

            bundle = export_pretrained("efficientnet_lite0", tmp / "bundle")
            Finder.open(bundle).enroll("my_dog", list_images([EXAMPLES / "dog"]), "dog",
                                       negatives=list_images([EXAMPLES / "negatives"]))
        clip = tmp / "clip.mp4"
        started = time.time()
        truth = make_clip(clip, args.seconds)
        made = time.time() - started
        size = clip.stat().st_size / 1e6
        report = {"clip": f"{WIDTH}x{HEIGHT}, {RATE} fps, {args.seconds:g} s, H.264 ({size:.1f} MB)",
                  "clip_seconds_to_make": round(made, 1), "frames_with_the_dog": int(sum(truth))}
        for name, smoothing in (("raw", False), ("smoothed", True)):
            r = run_find(bundle, clip, smoothing)
            present = r.pop("present")
            report.update({f"{name}_{k}": v for k, v in r.items()})
            report[f"{name}_toggles_per_minute"] = round(toggles_per_minute(present, args.seconds), 1)
            report[f"{name}_balanced_accuracy"] = round(balanced_accuracy(present, truth), 3)
    report["truth_toggles_per_minute"] = round(toggles_per_minute(truth, args.seconds), 1)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
