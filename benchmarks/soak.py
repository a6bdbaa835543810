"""Soak: a store of 10,000 prototypes, a run over 2,000 photos, and retrieval over 100,000 embeddings.

    python benchmarks/soak.py [--objects 10000] [--images 2000] [--gallery 100000] [--out runs/soak.json]

The real Lite0 bundle (pretrained) holds the example dog plus synthetic prototypes (random unit
vectors, one reference each) up to --objects. The photos are the example photos under the paper's
augmentations (flip, rotation, crop), each a new image. Per photo: embed once, classify against all
objects, localize (box + mask) those judged present. RSS is sampled every 100 photos; it must stay
flat (no growth with the number of photos processed). Retrieval: top-10 over --gallery random unit
embeddings, median per query.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_persrep.eval.bench import print_and_save
from edge_persrep.runtime import Finder, Prototype, list_images, load_image
from edge_persrep.runtime.finder import top_k
from edge_persrep.server_side.synth.augment import paper_augment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--images", type=int, default=2_000)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("runs/soak.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    report: dict = {"objects": args.objects, "images": args.images, "gallery": args.gallery}

    with tempfile.TemporaryDirectory() as tmp:
        # exported in a child process so that this one holds only the runtime (no torch in RSS)
        subprocess.run([sys.executable, "-m", "edge_persrep.cli", "export", "--backbone", "efficientnet_lite0",
                        "--pretrained", "--out", str(Path(tmp) / "bundle")], check=True, stdout=subprocess.DEVNULL)
        finder = Finder.open(Path(tmp) / "bundle")
        finder.enroll("dog", list_images([EXAMPLES / "dog"]), "dog", negatives=list_images([EXAMPLES / "negatives"]))
        d, c = finder.bundle.layout.embedding_dim, finder.bundle.layout.grid_dim
        for i in range(args.objects - 1):
            e = unit_rows(rng, 1, d)
            finder.store.add(Prototype(f"synthetic{i:05d}", "", e, unit_rows(rng, 1, c), unit_rows(rng, 1, c), 0.99))
        started = time.perf_counter()
        finder.store.save(finder.bundle.store_path)
        report["store_save_s"] = round(time.perf_counter() - started, 2)
        report["store_mb"] = round(finder.bundle.store_path.stat().st_size / 1e6, 1)
        started = time.perf_counter()
        finder = Finder.open(finder.bundle.root)
        report["store_load_s"] = round(time.perf_counter() - started, 2)

        sources = [load_image(p) for p in list_images([EXAMPLES / "dog", EXAMPLES / "dog_heldout",
                                                       EXAMPLES / "negatives", EXAMPLES / "heldout_others"])]
        aug = random.Random(0)
        per_image, rss, found = [], [], 0
        started_all = time.perf_counter()
        for i in range(args.images):
            photo = paper_augment(sources[i % len(sources)], aug, 320)[0]
            start = time.perf_counter()
            (features,) = finder.embed([photo])
            matches = finder.find(features, "all")
            per_image.append((time.perf_counter() - start) * 1000)
            found += sum(m.present for m in matches)
            if i % 100 == 0:
                rss.append(round(rss_mb(), 1))
        total = time.perf_counter() - started_all
    report["torch_imported"] = "torch" in sys.modules
    report.update({
        "find_median_ms": round(statistics.median(per_image), 2),
        "find_p95_ms": round(float(np.percentile(per_image, 95)), 2),
        "throughput_images_per_s": round(args.images / total, 2),
        "present_answers": found,
        "rss_mb_every_100_images": rss,
        "rss_growth_mb_after_warmup": round(rss[-1] - rss[1], 1) if len(rss) > 2 else None,
    })

    gallery = unit_rows(rng, args.gallery, 1280)
    queries = unit_rows(rng, 51, 1280)
    top_k(gallery, queries[:1], 10)
    times = []
    for q in queries[1:]:
        start = time.perf_counter()
        top_k(gallery, q[None], 10)
        times.append((time.perf_counter() - start) * 1000)
    report["retrieval_top10_median_ms"] = round(statistics.median(times), 2)
    report["retrieval_top10_max_ms"] = round(max(times), 2)

    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
