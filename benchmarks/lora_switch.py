"""Many objects on one ONNX Runtime session: LoRA adapter size, load time and per-switch cost.

    python benchmarks/lora_switch.py RUN_DIR [RUN_DIR ...] [--repeats 30] [--out runs/lora_switch.json]

Each RUN_DIR is a finished `personalize` run of the same backbone. For each, `export-adapter` is
run; then, on one base session, the runs alternate every call (a switch on every image) and are
compared with each object's merged model: median latency, and the minimum cosine between the
adapter's and the merged model's embeddings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_persrep.eval.bench import print_and_save
from edge_persrep.runtime.bundle import make_session


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/lora_switch.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for i, run in enumerate(args.runs):
            folder = Path(tmp) / f"a{i}"
            subprocess.run([sys.executable, "-m", "edge_persrep.cli", "export-adapter", str(run), "--out", str(folder)],
                           check=True, capture_output=True)
            folders.append(folder)
        size = json.loads((folders[0] / "adapter_info.json").read_text())["onnxruntime_adapter"]["input_size"]
        x = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        base = make_session(folders[0] / "lora_base.onnx", ["CPUExecutionProvider"])
        load_ms, adapters = [], []
        for f in folders:
            start = time.perf_counter()
            adapter = ort.LoraAdapter()
            adapter.Load(str(f / "object.onnx_adapter"))
            load_ms.append((time.perf_counter() - start) * 1000)
            adapters.append(adapter)
        merged = [make_session(run / "bundle" / "model.onnx", ["CPUExecutionProvider"]) for run in args.runs]

        def run_adapter(k):
            options = ort.RunOptions()
            options.add_active_adapter(adapters[k])
            return base.run(["embedding"], {"image": x}, options)[0]

        cosines = [float(np.sum(run_adapter(k) * merged[k].run(["embedding"], {"image": x})[0]))
                   for k in range(len(args.runs))]
        for _ in range(3):
            run_adapter(0)
            merged[0].run(None, {"image": x})
        switching, plain = [], []
        for r in range(args.repeats):
            k = r % len(args.runs)
            start = time.perf_counter()
            run_adapter(k)
            switching.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            merged[k].run(["embedding"], {"image": x})
            plain.append((time.perf_counter() - start) * 1000)
        report = {
            "objects": len(args.runs), "input_size": size,
            "adapter_bytes": (folders[0] / "object.onnx_adapter").stat().st_size,
            "merged_model_bytes": (args.runs[0] / "bundle" / "model.onnx").stat().st_size,
            "base_model_bytes": (folders[0] / "lora_base.onnx").stat().st_size,
            "adapter_load_ms_median": round(statistics.median(load_ms), 2),
            "run_with_switch_every_call_ms_median": round(statistics.median(switching), 2),
            "merged_model_run_ms_median": round(statistics.median(plain), 2),
            "min_cosine_adapter_vs_merged": round(min(cosines), 6),
        }
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
