"""Is the shipped int8 model good on this CPU, and is it faster? One row per personalized run.

For each run directory (made by `personalize`): the fp32 bundle model is quantized exactly as
`export --precision int8` does (export/precision.py: to_int8) on the run's calibration images, and
compared with fp32 on the run's disjoint check images, in two ONNX Runtime session modes:
    precise   session.x64quantprecision = 1 (what the runtime and the gate use)
    default   without it: on x86 CPUs without VNNI the u8s8 kernels saturate (VPMADDUBSW)
and timed side by side in one process (batch 1, one thread, median of --repeats runs, interleaved).

    python benchmarks/int8.py RUN [RUN ...] [--repeats 30] [--out runs/int8.json]
Prints a Markdown table and writes JSON. Run it alone: another CPU job skews the timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_persrep.export.onnx_export import cosines
from edge_persrep.export.precision import to_int8
from edge_persrep.pipeline import RunDir
from edge_persrep.runtime.bundle import SESSION_CONFIG, make_session


def _session(path: Path, precise: bool):
    """The runtime's session on one thread; `precise=False` drops only the x64 precision mode."""
    config = {k: v for k, v in SESSION_CONFIG.items() if precise or k != "session.x64quantprecision"}
    return make_session(path, ["CPUExecutionProvider"], threads=1, config=config)


def _outputs(session, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    runs = [session.run(None, {"image": image[None]}) for image in images]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def _cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return ",".join(found) or "none of avx2/avx512/vnni"


def measure_run(run: Path, repeats: int) -> dict:
    fp32 = run / "bundle" / "model.onnx"
    size = json.loads((run / "bundle" / "bundle.json").read_text())["input"]["size"]
    calibration, checks = RunDir(run).int8_calibration(size)
    images = checks.all
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "model.int8.onnx"
        to_int8(fp32, int8, calibration)
        sessions = {"fp32": _session(fp32, True), "int8 precise": _session(int8, True),
                    "int8 default": _session(int8, False)}
        e32, g32 = _outputs(sessions["fp32"], images)
        row: dict = {"run": run.name, "calibration_images": len(calibration), "check_images": len(images),
                     "int8_mb": round(int8.stat().st_size / 1e6, 2), "fp32_mb": round(fp32.stat().st_size / 1e6, 2)}
        for mode in ("precise", "default"):
            e, g = _outputs(sessions[f"int8 {mode}"], images)
            row[f"{mode}_min_cos"] = round(float(cosines(e32, e).min()), 5)
            row[f"{mode}_mean_cos"] = round(float(cosines(e32, e).mean()), 5)
            row[f"{mode}_grid_cos"] = round(float(cosines(g32, g).mean()), 5)
        times = {k: [] for k in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, {"image": images[:1]})
                times[name].append(time.perf_counter() - started)
        for name, values in times.items():
            row[f"{name.replace(' ', '_')}_ms"] = round(1000 * statistics.median(values), 1)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories made by `personalize`")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/int8.json"))
    args = ap.parse_args(argv)
    rows = [measure_run(run, args.repeats) for run in args.runs]
    columns = list(rows[0])
    print(f"CPU flags: {_cpu_flags()}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_flags": _cpu_flags(), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
