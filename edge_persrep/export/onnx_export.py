"""Export a (merged) backbone to ONNX with preprocessing inside the graph, and prove it matches torch.

Choices, with reasons:
- `torch.onnx.export(dynamo=False)`, opset 17: the TorchScript exporter takes about 1 s for Lite0
  and its graphs load in every onnxruntime and converter we target; optimum's exporter pins old
  transformers/diffusers, so we do not use it.
- Input `image`: uint8 [N, S, S, 3], RGB, at one fixed S (the registry's export size; position
  embeddings of ViTs are computed at S, so no interpolation op is left in the graph). uint8 NHWC is
  what camera and decoder buffers hold; /255, mean and std are folded in, so no app re-implements them.
- Outputs: `embedding` [N, D] and `patch_grid` [N, h, w, C], both L2-normalised (a cosine is a dot
  product at run time). The batch axis is dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..runtime.errors import EdgePersrepError
from ..server_side.backbones import Backbone
from ..server_side.embedder import ImageEmbedder
from .graph_passes import basic_optimize, fold_pads_into_convs
from .static_graph import freeze_same_padding

OPSET = 17
MIN_COSINE = 0.9999


class ExportError(EdgePersrepError):
    """The exported graph does not reproduce the torch model."""


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine along the last axis, whatever the vectors' norms; two zero vectors agree (cosine 1), a
    zero and a non-zero one do not (0): a ReLU network can output an all-zero patch."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    both_zero = (na < 1e-6) & (nb < 1e-6)
    return np.where(both_zero, 1.0, np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12))


def trace_onnx(wrapper: nn.Module, path: Path, size: int, constant_folding: bool = True) -> None:
    """The raw TorchScript export of a wrapper: input `image` uint8 [batch, S, S, 3], outputs
    `embedding` and `patch_grid`, dynamic batch."""
    with torch.no_grad(), warnings.catch_warnings():
        # Known and harmless, printed three times per export: a strided Slice is left unfolded
        # (ONNX Runtime's optimisation in finish_graph folds what can be). Other warnings still show.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            wrapper, (torch.zeros(1, size, size, 3, dtype=torch.uint8),), str(path), dynamo=False,
            opset_version=OPSET, input_names=["image"], output_names=["embedding", "patch_grid"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}, "patch_grid": {0: "batch"}},
            do_constant_folding=constant_folding,
        )


def finish_graph(raw: Path, path: Path) -> None:
    """Raw export -> shipped graph: onnxruntime's basic optimisations, then Pads folded into Convs."""
    basic_optimize(raw, path)
    fold_pads_into_convs(path)


def export_onnx(backbone: Backbone, path: Path, size: int, check_images: np.ndarray) -> dict:
    """Write `path`; return the measured agreement with torch on `check_images` (uint8 [N,S,S,3]) and
    the per-image output shapes ([D], [h, w, C]). Raise ExportError if the minimum cosine of either
    output is below MIN_COSINE."""
    wrapper = ImageEmbedder(freeze_same_padding(backbone, size)).eval()
    raw = path.with_name(path.name + ".raw")
    trace_onnx(wrapper, raw, size)
    finish_graph(raw, path)
    raw.unlink()
    with torch.no_grad():
        ref_embedding, ref_grid = (t.numpy() for t in wrapper(torch.from_numpy(check_images)))
    from ..runtime.bundle import make_session

    session = make_session(path, ["CPUExecutionProvider"])
    embedding, grid = session.run(["embedding", "patch_grid"], {"image": check_images})
    check = {
        "images": int(len(check_images)),
        "min_cosine_embedding": float(np.min(cosines(embedding, ref_embedding))),
        "min_cosine_patch_grid": float(np.min(cosines(grid, ref_grid))),
        "max_abs_diff_embedding": float(np.max(np.abs(embedding - ref_embedding))),
    }
    if min(check["min_cosine_embedding"], check["min_cosine_patch_grid"]) < MIN_COSINE:
        raise ExportError(f"{path}: onnxruntime output differs from torch ({check}); not shipping it")
    return check, embedding.shape[1:], grid.shape[1:]
