"""`edge-persrep bench`: median per-image latency, torch eager vs ONNX Runtime fp32, and each runtime
task, all measured in one run on the same photos (machines are noisy: compare within a run)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_bench(backbone: str, images: list[str] | None, repeats: int, threads: int, out: Path) -> dict:
    import torch

    from ..export.onnx_export import ExportWrapper
    from ..pipeline import export_pretrained
    from ..runtime import Finder, list_images, load_image
    from ..runtime.bundle import make_session
    from ..runtime.images import resize_to_input
    from ..server_side.backbones import create_backbone

    if threads:
        torch.set_num_threads(threads)
    paths = list_images(images or [EXAMPLES / "dog_heldout", EXAMPLES / "heldout_others"])
    photos = [load_image(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = export_pretrained(backbone, Path(tmp) / "bundle")
        finder = Finder.open(bundle_dir)
        if threads:
            finder.bundle._session = make_session(finder.bundle.model_path, ["CPUExecutionProvider"], threads)
        finder.enroll("object", list_images([EXAMPLES / "dog"]))
        size = finder.bundle.input_size
        batch1 = resize_to_input(photos[0], size)[None]
        batch8 = np.repeat(batch1, 8, axis=0)
        wrapper = ExportWrapper(create_backbone(backbone)).eval()

        def torch_run(batch):
            with torch.inference_mode():
                return wrapper(torch.from_numpy(batch))

        rows = {
            "torch_eager_b1": median_ms(lambda: torch_run(batch1), repeats),
            "ort_fp32_b1": median_ms(lambda: finder.bundle.run(batch1), repeats),
            "torch_eager_b8_per_image": median_ms(lambda: torch_run(batch8), max(3, repeats // 4)) / 8,
            "ort_fp32_b8_per_image": median_ms(lambda: finder.bundle.run(batch8), max(3, repeats // 4)) / 8,
        }
        features = finder.embed([photos[0]])[0]
        rows["runtime_embed"] = median_ms(lambda: finder.embed([photos[0]]), repeats)
        rows["runtime_classify"] = median_ms(lambda: finder.classify(features), repeats)
        rows["runtime_detect"] = median_ms(lambda: finder.find(features, "detect"), repeats)
        rows["runtime_segment"] = median_ms(lambda: finder.find(features, "segment"), repeats)
        rows["runtime_find_all_per_image"] = median_ms(
            lambda: finder.find(finder.embed([photos[0]])[0], "all"), repeats)
    report = {
        "backbone": backbone, "input_size": size, "repeats": repeats, "threads": threads or "default",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "median_ms": {k: round(v, 3) for k, v in rows.items()},
        "ratios": {"torch_over_ort_b1": round(rows["torch_eager_b1"] / rows["ort_fp32_b1"], 2),
                   "find_all_over_session_run": round(rows["runtime_find_all_per_image"] / rows["ort_fp32_b1"], 2)},
    }
    print(f"backbone {backbone}, input {size}px, median of {repeats} runs, threads {report['threads']}")
    print("| measurement | median ms |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    for k, v in report["ratios"].items():
        print(f"| ratio {k} | {v:.2f}x |")
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report
