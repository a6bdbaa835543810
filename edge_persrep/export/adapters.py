"""The personalization alone: a peft LoRA adapter folder (safetensors), a few MB instead of the
whole model, plus what it must be applied to (base backbone, weight source and its sha256).

Load it with `BackboneSource(...).build()` (the base recorded here) +
`contrastive.load_adapter(backbone, folder)`: the merged model is the one the run exported. The
folder also holds the same LoRA in ONNX Runtime's adapter format (`object.onnx_adapter`) and the
base graph it plugs into (`lora_base.onnx`, identical for every object trained with the same
backbone and LoRA config): one session serves every object, switched per run (see ort_lora.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json, sha256_file
from ..server_side.backbones import BackboneSource, get_spec


def export_adapter(run_dir: Path, out: Path) -> Path:
    source = run_dir / "train" / "adapter"
    if not (source / "adapter_config.json").is_file():
        raise EdgePersrepError(f"{run_dir}: no trained adapter (train/adapter/adapter_config.json); "
                               "run personalize first")
    if out.exists() and any(out.iterdir()) and not (out / "adapter_info.json").is_file():
        raise EdgePersrepError(f"{out}: exists, is not empty and is not an adapter folder; choose another --out")
    record = json.loads((run_dir / "run.json").read_text())
    source_backbone = BackboneSource.of_run(record)
    spec = get_spec(source_backbone.backbone)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(source / name, staging / name)
    from .ort_lora import export_lora_adapter, export_lora_base

    export_lora_base(source_backbone, source, staging / "lora_base.onnx", spec.preprocess.export_size)
    ort_adapter = export_lora_adapter(source_backbone, source, staging / "lora_base.onnx",
                                      staging / "object.onnx_adapter")
    atomic_write_json(staging / "adapter_info.json", {
        "object": record["name"], "category": record.get("category", ""),
        "base": {"backbone": spec.name, "timm_name": spec.timm_name,
                 "weights": source_backbone.weights_file or spec.weights_package or spec.hub_id,
                 "weights_sha256": source_backbone.weights_sha256},
        "files": {n: sha256_file(staging / n) for n in ("adapter_config.json", "adapter_model.safetensors",
                                                        "lora_base.onnx", "object.onnx_adapter")},
        "onnxruntime_adapter": {**ort_adapter, "base": "lora_base.onnx", "input_size": spec.preprocess.export_size},
        "training": record.get("train_config"),
    })
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    return out
