"""A finetuning-free generator: IP-Adapter (Ye et al. 2023) conditions Stable Diffusion on the reference
photos themselves, so positives need no DreamBooth training at all (the family PatchDPO improves).

The reference photo goes through a CLIP image encoder; a small projection turns its embedding into
4 extra context tokens, which new key/value projections in every cross-attention layer attend to
beside the prompt's (decoupled cross-attention). diffusers loads it into a pipeline
(`load_ip_adapter`) and weighs it with `set_ip_adapter_scale`. The weights come from the hub
(`h94/IP-Adapter`, `models/ip-adapter_sd15.safetensors` and `models/image_encoder`) or from a local
folder of the same layout; `build_random_ip_adapter` writes one with random weights for a given
UNet, for tests and offline trials (its images mean nothing; its timing is real).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import EdgePersrepError

DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_WEIGHT = "models/ip-adapter_sd15.safetensors"  # inside the hub repo or the folder
IMAGE_TOKENS = 4  # the plain IP-Adapter's: diffusers infers it from the projection's shape


@dataclass(frozen=True)
class IPAdapterConfig:
    source: str = DEFAULT_IP_ADAPTER  # hub id or local folder
    weight: str = DEFAULT_WEIGHT  # the adapter's file inside it; the image encoder sits beside it in image_encoder/
    scale: float = 0.6  # how strongly the reference photo steers (1: the photo, 0: the prompt alone)

    def record(self) -> dict:
        return {"source": self.source, "weight": self.weight, "scale": self.scale}


def load_into(pipe, config: IPAdapterConfig) -> None:
    """Load the adapter and its image encoder into a StableDiffusionPipeline and set its scale."""
    weight = Path(config.weight)
    folder = Path(config.source)
    if folder.exists() and not (folder / weight).is_file():
        raise EdgePersrepError(f"{folder / weight}: no IP-Adapter weights there; pass --ip-adapter a folder laid out "
                               f"like {DEFAULT_IP_ADAPTER} (models/ip-adapter_sd15.safetensors, models/image_encoder/)")
    try:
        with quiet_loading():
            pipe.load_ip_adapter(config.source, subfolder=str(weight.parent), weight_name=weight.name,
                                 image_encoder_folder="image_encoder")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise EdgePersrepError(f"{config.source}: could not load the IP-Adapter ({exc}); download it (e.g. "
                               f"huggingface-cli download {DEFAULT_IP_ADAPTER}) or pass --ip-adapter FOLDER") from exc
    pipe.set_ip_adapter_scale(config.scale)


@contextlib.contextmanager
def quiet_loading():
    """transformers' and diffusers' loading progress bars and notices, off while the adapter loads
    (they are not about anything the user can act on)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()


def build_random_ip_adapter(out: Path, unet, seed: int = 0) -> Path:
    """Write a randomly initialised IP-Adapter for `unet` (diffusers' file layout, as on the hub):
    out/models/ip-adapter_sd15.safetensors (image projection + every cross-attention layer's
    to_k_ip / to_v_ip) and out/models/image_encoder/ (a small CLIP vision model)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    embed_dim = 32
    models = out / "models"
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8,
        projection_dim=embed_dim)).save_pretrained(models / "image_encoder", safe_serialization=True)
    tensors = {"image_proj.proj.weight": torch.randn(cross * IMAGE_TOKENS, embed_dim) * 0.2,
               "image_proj.proj.bias": torch.zeros(cross * IMAGE_TOKENS),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1  # diffusers numbers the cross-attention layers 1, 3, 5, ... in attn_processors order
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            hidden = _hidden_size(unet, name)
            tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.2
            tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.2
            key += 2
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(models / "ip-adapter_sd15.safetensors"))
    return out


def _hidden_size(unet, name: str) -> int:
    channels = list(unet.config.block_out_channels)
    if name.startswith("mid_block"):
        return channels[-1]
    block = int(name.split(".")[1])
    return channels[::-1][block] if name.startswith("up_blocks") else channels[block]
