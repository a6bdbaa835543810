"""One base ONNX model for many personal objects: ONNX Runtime LoRA adapters.

The base graph keeps every LoRA branch un-merged, `y = W x + s * B (A x)`, with each A and B
declared as an *overridable* initializer (an initializer that is also a graph input). Its stored
values are zeros, so with no adapter active the base graph is exactly the pretrained backbone.
An object's adapter (`.onnx_adapter`, ONNX Runtime's adapter format) holds its A and B matrices;
`RunOptions.add_active_adapter` swaps them in for one run, with no new session.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..runtime.errors import EdgePersrepError
from ..server_side.backbones import BackboneSource
from ..server_side.embedder import ImageEmbedder
from .onnx_export import finish_graph, trace_onnx
from .static_graph import freeze_same_padding

LORA_MARK = ".lora_"


def _unmerged(base: BackboneSource, adapter_dir: Path):
    from peft import PeftModel

    backbone = base.build()
    peft_model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
    backbone.model = peft_model.base_model.model
    return backbone.eval()


def export_lora_base(base: BackboneSource, adapter_dir: Path, path: Path, size: int) -> list[str]:
    """Write the base graph (LoRA structure of `adapter_dir`, zero LoRA weights); returns the names
    of its LoRA parameters."""
    import onnx
    from onnx import helper, numpy_helper

    backbone = _unmerged(base, adapter_dir)
    with torch.no_grad():  # distinct values, or the exporter merges identical tensors into one name
        generator = torch.Generator().manual_seed(0)
        for name, param in backbone.named_parameters():
            if LORA_MARK in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    wrapper = ImageEmbedder(freeze_same_padding(backbone, size)).eval()
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # ORT warns once per overridable initializer, which is the point here
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        trace_onnx(wrapper, raw, size, constant_folding=False)
        model = onnx.load(str(raw))
        names = [i.name for i in model.graph.initializer if LORA_MARK in i.name]
        if not names:
            raise EdgePersrepError(f"{adapter_dir}: the exported graph has no LoRA parameters to expose")
        expected = sum(LORA_MARK in n for n, _ in backbone.named_parameters())
        if len(names) != expected:
            raise EdgePersrepError(f"LoRA graph export kept {len(names)} of {expected} LoRA tensors as named "
                                   "initializers")
        for init in model.graph.initializer:
            if init.name in names:  # stored as zeros (= the pretrained model), declared overridable
                zeros = np.zeros(numpy_helper.to_array(init).shape, np.float32)
                init.CopyFrom(numpy_helper.from_array(zeros, init.name))
                value_info = helper.make_tensor_value_info(init.name, onnx.TensorProto.FLOAT, list(zeros.shape))
                model.graph.input.append(value_info)
        exposed = Path(tmp) / "exposed.onnx"
        onnx.save(model, str(exposed))
        finish_graph(exposed, path)  # overridable initializers are not folded away
    return names


def export_lora_adapter(base: BackboneSource, adapter_dir: Path, base_path: Path, out: Path) -> dict:
    """The object's LoRA matrices, named as in the base graph, in ONNX Runtime's adapter format."""
    import onnx
    import onnxruntime as ort

    expected = {i.name for i in onnx.load(str(base_path)).graph.initializer if LORA_MARK in i.name}
    backbone = _unmerged(base, adapter_dir)
    params = {f"backbone.{n}": p.detach().numpy().astype(np.float32)
              for n, p in backbone.named_parameters() if LORA_MARK in n}
    missing = expected - set(params)
    if missing:
        raise EdgePersrepError(f"{adapter_dir}: adapter does not fit the base graph (missing {sorted(missing)[:2]}...)")
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({n: ort.OrtValue.ortvalue_from_numpy(params[n]) for n in sorted(expected)})
    adapter.export_adapter(str(out))
    return {"parameters": len(expected), "bytes": out.stat().st_size}
