"""Core ML export: an ML program (.mlpackage) converted from `torch.export`.

Input `image`: a Core ML ImageType, RGB, S x S: the app hands over a CVPixelBuffer and Core ML
feeds 0-255 floats; /255, mean and std are inside the model (ImageType's scale is a single scalar,
so per-channel std cannot be expressed there). Outputs `embedding` [1, D] and `patch_grid`
[1, h, w, C], both L2-normalised, named explicitly (by default they come out as `div`, ...).
The bundle manifest travels in the model's user-defined metadata. Conversion runs on Linux;
prediction needs macOS and is not claimed here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .. import __version__
from ..server_side.backbones import Backbone
from ..server_side.embedder import ImageEmbedder, l2_normalize
from .static_graph import freeze_same_padding


class CoreMLWrapper(ImageEmbedder):
    """ImageEmbedder's normalisation and outputs for Core ML's float NCHW 0-255 image input."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, grid = self.backbone(image * self.scale - self.offset)
        return l2_normalize(embedding, 1), l2_normalize(grid, -1)


def import_coremltools():
    """coremltools without its import-time warnings, which are known and harmless here: on Linux it
    converts but cannot run models (eight "Failed to load _MLModelProxy" lines), and it warns about
    every torch and scikit-learn newer than it was tested with (the export is checked instead).
    What it logs while converting still shows."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


def export_coreml(backbone: Backbone, path: Path, size: int, manifest: dict) -> dict:
    ct = import_coremltools()

    wrapper = CoreMLWrapper(freeze_same_padding(backbone, size)).eval()
    example = torch.rand(1, 3, size, size) * 255
    program = torch.export.export(wrapper, (example,)).run_decompositions({})
    model = ct.convert(
        program,
        inputs=[ct.ImageType(name="image", shape=(1, 3, size, size), color_layout=ct.colorlayout.RGB)],
        outputs=[ct.TensorType(name="embedding"), ct.TensorType(name="patch_grid")],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
    )
    model.author = "edge-persrep"
    model.version = __version__
    model.short_description = (f"Personalized {manifest['backbone']['name']} embedding: RGB {size}x{size} image -> "
                               "L2-normalised embedding and patch grid")
    model.user_defined_metadata["edge_persrep_manifest"] = json.dumps(
        {k: manifest[k] for k in ("format", "format_version", "backbone", "input", "outputs") if k in manifest})
    model.save(str(path))
    return {"format": "coreml", "minimum_deployment_target": "iOS16", "compute_precision": "fp16 (ML program default)"}
