"""Write a bundle directory in one step: built in a temp sibling, then renamed into place."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, SCORER_FILE, STORE_FILE, FeatureLayout
from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json, sha256_file
from ..runtime.images import resize_to_input
from ..server_side.backbones import Backbone, check_export_size
from .onnx_export import OPSET, export_onnx
from .scorer import write_scorer

MODEL_FILE = "model.onnx"


def versions() -> dict:
    import onnx
    import onnxruntime
    import timm
    import torch

    out = {"edge_persrep": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "timm": timm.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "numpy": np.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:
        pass
    return out


def prepare_output_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite a directory that is not a bundle of ours, unless forced."""
    if out.exists() and not out.is_dir():
        raise EdgePersrepError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not force:
        raise EdgePersrepError(f"{out}: exists, is not empty and is not a bundle; choose another --out or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise EdgePersrepError(f"{out.parent}: not writable; choose another --out")


def write_bundle(backbone: Backbone, out: Path, check_photos: list[Image.Image], training: dict | None,
                 force: bool = False, size: int | None = None) -> Path:
    """Export `backbone` (LoRA already merged) and write bundle.json; the store starts empty."""
    prepare_output_dir(out, force)
    spec = backbone.spec
    size = check_export_size(spec, size) if size else spec.preprocess.export_size
    rng = np.random.default_rng(0)
    check = np.stack([resize_to_input(p, size) for p in check_photos[:4]]
                     + [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)])
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        started = time.time()
        export_check, (emb_dim,), (gh, gw, grid_dim) = export_onnx(backbone, staging / MODEL_FILE, size, check)
        scorer = write_scorer(staging / SCORER_FILE, FeatureLayout(int(emb_dim), int(grid_dim), int(gh), int(gw),
                                                                   size // int(gw)))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "backbone": {"name": spec.name, "timm_name": spec.timm_name, "family": spec.family,
                         "weights": spec.weights_package or spec.hub_id},
            "input": {"name": "image", "size": size, "dtype": "uint8", "layout": "NHWC", "color": "RGB",
                      "resize": "whole photo stretched to size x size, bicubic (no crop)",
                      "normalisation": {"in_graph": True, "mean": list(spec.preprocess.mean),
                                        "std": list(spec.preprocess.std)}},
            "outputs": {"embedding": {"name": "embedding", "dim": int(emb_dim), "normalised": "L2"},
                        "patch_grid": {"name": "patch_grid", "dim": int(grid_dim), "height": int(gh), "width": int(gw),
                                       "stride": size // int(gw), "normalised": "L2 per patch"}},
            "files": {"model": {"path": MODEL_FILE, "sha256": sha256_file(staging / MODEL_FILE),
                                "bytes": (staging / MODEL_FILE).stat().st_size, "opset": OPSET, "precision": "fp32"},
                      "scorer": scorer},
            "store": STORE_FILE,
            "default_threshold": spec.default_threshold,
            "export_check": {**export_check, "seconds": round(time.time() - started, 2)},
            "training": training,
            "versions": versions(),
        }
        atomic_write_json(staging / MANIFEST, manifest)
        swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def swap_into_place(staging: Path, out: Path) -> None:
    """Replace the directory `out` with `staging` (two renames; the old one is deleted after)."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "bundle")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
