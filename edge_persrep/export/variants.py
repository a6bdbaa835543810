"""Add lower-precision and platform variants to an exported bundle, each checked before it ships.

    fp16   model.fp16.onnx   (gated like int8)
    int8   model.int8.onnx   static QDQ calibrated on the user's data (gated; refused if it drifts)
    ort    model.ort         ONNX Runtime Mobile format, batch 1 (fp32 weights)
    coreml model.mlpackage   Core ML ML program (spec checked; runs on Apple devices only)
Each file is written, checksummed and listed under `variants` in bundle.json (rewritten atomically
last, so a crash leaves the previous manifest and at worst an unlisted file).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from ..runtime.bundle import MANIFEST, SESSION_CONFIG
from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json, sha256_tree, tree_bytes
from .precision import CheckSet, Gate, GateError, gate_verdict, measure, to_fp16, to_int8

FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "ort": "model.ort", "coreml": "model.mlpackage"}
FORMATS = ("onnx", "ort", "coreml")
PRECISIONS = ("fp32", "fp16", "int8")


def parse_list(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise EdgePersrepError(f"--{what} {value}: choose from {', '.join(allowed)} (comma-separated)")
    return items


def variant_names(formats: Sequence[str], precisions: Sequence[str]) -> list[str]:
    """The variants asked for beyond the fp32 ONNX model every bundle has."""
    return [p for p in precisions if p != "fp32"] + [f for f in formats if f != "onnx"]


def add_variants(bundle_dir: Path, backbone, formats: list[str], precisions: list[str],
                 calibration=None, checks: CheckSet | None = None, gate: Gate = Gate(),
                 force_int8: bool = False) -> dict:
    """Build the requested variants of bundle_dir/model.onnx; returns {name: manifest entry}."""
    manifest_path = bundle_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    fp32 = bundle_dir / manifest["files"]["model"]["path"]
    size = manifest["input"]["size"]
    wanted = variant_names(formats, precisions)
    if "int8" in wanted and (calibration is None or checks is None):
        raise EdgePersrepError("int8 needs calibration and check images: export a run directory, or pass "
                               "--calibration DIR for a pretrained export")
    variants = dict(manifest.get("variants") or {})
    rejected = {}
    for name in sorted(wanted, key=lambda n: n == "int8"):  # int8 last: a refusal keeps the others
        path = bundle_dir / FILES[name]
        started = time.time()
        if name in ("fp16", "int8"):
            if name == "fp16":
                to_fp16(fp32, path)
                method = None
            else:
                method = to_int8(fp32, path, calibration)
            check = measure(fp32, path, checks) if checks is not None else None
            reasons = gate_verdict(check, gate) if check is not None else []
            entry = {"format": "onnx", "precision": name, "check": check, "calibration": method,
                     "session_config": dict(SESSION_CONFIG),  # what the gate measured under; apps set it too
                     "gate": {**asdict(gate), "passed": not reasons, "forced": bool(reasons)}}
            if reasons and not (name == "int8" and force_int8):
                path.unlink()
                rejected[name] = {"check": check, "reasons": reasons}
                continue
        elif name == "ort":
            from .mobile import export_ort

            entry = {**export_ort(fp32, path), "precision": "fp32"}
        else:
            from .coreml import export_coreml

            if path.exists():
                shutil.rmtree(path)
            entry = {**export_coreml(backbone, path, size, manifest), "precision": "fp16 compute"}
        entry.update({"path": path.name, "sha256": sha256_tree(path), "bytes": tree_bytes(path),
                      "seconds": round(time.time() - started, 1)})
        variants[name] = entry
    manifest["variants"] = variants
    if rejected:
        manifest["variants_rejected"] = rejected
    atomic_write_json(manifest_path, manifest)
    if rejected:
        details = "; ".join(f"{n}: {', '.join(r['reasons'])}" for n, r in rejected.items())
        raise GateError(f"{bundle_dir}: refused to ship {details}. Other variants were written. Ship fp16 or fp32 "
                        "instead, or use --force-int8 to ship it anyway (marked forced in bundle.json)")
    return variants
