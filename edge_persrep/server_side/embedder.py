"""The torch embedder: uint8 photos in, unit global embedding and unit patch grid out, the
backbone's normalisation inside. The ONNX and Core ML exports trace it, the synthetic-data filter
and the benchmarks run it, so torch and every exported model compute the same thing."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..runtime.finder import ImageFeatures, embed_images
from .backbones import Backbone


def l2_normalize(x: torch.Tensor, dim: int, eps: float = 1e-12) -> torch.Tensor:
    """x / max(||x||, eps) with plain Mul/ReduceSum/Sqrt/Max/Div ops: F.normalize exports as
    ReduceL2 + Expand, which the CoreML and NNAPI execution providers do not take."""
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True)).clamp_min(eps)


class ImageEmbedder(nn.Module):
    """uint8 NHWC RGB -> (unit embedding, unit patch grid); normalisation lives here, not in the model."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        pre = backbone.spec.preprocess
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(pre.std).view(1, 3, 1, 1)))
        self.register_buffer("offset", (torch.tensor(pre.mean) / torch.tensor(pre.std)).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).float() * self.scale - self.offset
        embedding, grid = self.backbone(x)
        return l2_normalize(embedding, 1), l2_normalize(grid, -1)


class Embedder:
    """The torch backbone behind the same uint8 interface as the exported bundle."""

    def __init__(self, backbone, device: str = "cpu"):
        self.device = device
        self.wrapper = ImageEmbedder(backbone).to(device).eval()
        self.size = backbone.spec.preprocess.export_size

    def __call__(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[ImageFeatures]:
        return embed_images(images, self.size, self._run, batch_size)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            embeddings, grids = self.wrapper(torch.from_numpy(batch).to(self.device))
        return embeddings.cpu().numpy(), grids.cpu().numpy()
