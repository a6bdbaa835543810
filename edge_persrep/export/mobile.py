"""ONNX Runtime Mobile: the `.ort` format, batch fixed to 1, and onnxruntime's own usability check.

Mobile execution providers (NNAPI on Android, CoreML on iOS) take only static shapes, so the mobile
variant pins the batch axis to 1 (`make_dynamic_shape_fixed`) before conversion. The usability
report of `onnxruntime.tools.check_onnx_model_mobile_usability` is kept in the bundle manifest.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ..runtime.errors import EdgePersrepError


def _tool(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise EdgePersrepError(f"onnxruntime tool {args[0]} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout + out.stderr


def export_ort(src: Path, dst: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "model.onnx"
        _tool("onnxruntime.tools.make_dynamic_shape_fixed", "--dim_param", "batch", "--dim_value", "1", str(src),
              str(fixed))
        report = _tool("onnxruntime.tools.check_onnx_model_mobile_usability", str(fixed))
        _tool("onnxruntime.tools.convert_onnx_models_to_ort", str(fixed), "--output_dir", tmp,
              "--optimization_style", "Runtime")
        (Path(tmp) / "model.with_runtime_opt.ort").replace(dst)
    lines = [re.sub(r"^INFO:\s*", "", line).strip() for line in report.splitlines()]
    wanted = r"partitions with|Unsupported ops|should perform well|recommended"
    keep = [line for line in lines if re.search(wanted, line)]
    return {"format": "ort", "batch": 1, "mobile_usability": keep}
