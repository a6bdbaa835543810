"""Stable Diffusion 1.5 on the user's machine: find the weights, check them before long work, load them.

`--sd-model` is a hub id (downloaded once into the Hugging Face cache; with `--offline` or
HF_HUB_OFFLINE=1 only the cache is read) or a local diffusers folder (`save_pretrained` layout).
`build_random_sd` writes a randomly initialised SD-shaped folder with the real CLIP tokenizer:
`tiny` for tests and for trying the whole pipeline offline, `sd15` (the real architecture, 1.07 B
parameters) for timing and memory benchmarks. Random weights generate noise, not objects.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...runtime.errors import EdgePersrepError

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# What a hub download fetches: the five components in safetensors, not the 4-7 GB single-file checkpoints.
HUB_FILES = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
             "text_encoder/model.safetensors", "tokenizer/*", "scheduler/*"]
_WEIGHT_FILES = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                 "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                 "text_encoder": ("model.safetensors", "pytorch_model.bin")}


def check_sd_folder(folder: Path) -> None:
    """Refuse a folder that lacks a component, its config or its weights (before any long work)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise EdgePersrepError(f"{folder}: not a diffusers Stable Diffusion folder (no model_index.json); pass a "
                               "folder written by save_pretrained, or a hub id")
    try:
        listed = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgePersrepError(f"{index}: not valid JSON ({exc}); re-download the model") from exc
    missing = []
    for name in COMPONENTS:
        sub = folder / name
        if name not in listed:
            missing.append(f"{name} (not in model_index.json)")
        elif not sub.is_dir():
            missing.append(f"{name}/")
        elif name in _WEIGHT_FILES:
            if not (sub / "config.json").is_file():
                missing.append(f"{name}/config.json")
            if not any((sub / w).is_file() for w in _WEIGHT_FILES[name]):
                missing.append(f"{name}/{_WEIGHT_FILES[name][0]}")
        elif name == "tokenizer" and not any((sub / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            missing.append("tokenizer/vocab.json or tokenizer.json")
        elif name == "scheduler" and not (sub / "scheduler_config.json").is_file():
            missing.append("scheduler/scheduler_config.json")
    if missing:
        raise EdgePersrepError(f"{folder}: Stable Diffusion folder is missing {', '.join(missing)}; "
                               "re-download or re-save the model")


def resolve_sd_model(model: str) -> Path:
    """A local folder (checked) for `model`: itself if it is a folder, else the hub snapshot."""
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        if not path.is_dir():
            raise EdgePersrepError(f"--sd-model {model}: no such folder (give a diffusers folder or a hub id "
                                   "like owner/name)")
        check_sd_folder(path)
        return path
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = Path(snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:  # hub errors are many types; the message below says what to do
        how = ("it is not in the local Hugging Face cache and --offline / HF_HUB_OFFLINE=1 forbids downloading"
               if offline else f"download failed ({type(exc).__name__}: {exc})")
        raise EdgePersrepError(f"--sd-model {model}: {how}; pass --sd-model DIR with a local diffusers folder") from exc
    check_sd_folder(folder)
    return folder


@dataclass
class StableDiffusion:
    """The loaded components; `resolution` is the pixel size the UNet was trained at."""

    folder: Path
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    scheduler_config: dict

    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.latent_factor

    def tokenize(self, prompts: list[str]):
        """Token ids [n, 77], padded and truncated as the text encoder was trained."""
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_prompts(self, prompts: list[str]):
        import torch

        with torch.no_grad():
            return self.text_encoder(self.tokenize(prompts).to(self.text_encoder.device))[0]


def load_sd(model: str | Path, device: str = "cpu", dtype=None) -> StableDiffusion:
    """Load the five components from a hub id or folder (checked first)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_sd_model(str(model))
    dtype = dtype or torch.float32
    try:
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise EdgePersrepError(f"{folder}: could not load Stable Diffusion ({exc}); re-download the model") from exc
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False).eval().to(device)
    return StableDiffusion(folder, tokenizer, text_encoder, vae, unet, scheduler_config)


# --- a randomly initialised SD-shaped model, built from configs (tests, offline demo, benchmarks) ----

ARCHITECTURES = {
    "tiny": {  # 64 px images, 32x32 latents: seconds per step on a CPU
        "unet": dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                     attention_head_dim=8, norm_num_groups=32),
        "vae": dict(sample_size=64, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                    layers_per_block=1, norm_num_groups=32),
        "text_encoder": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                             projection_dim=32),
    },
    "sd15": {  # Stable Diffusion 1.5 exactly (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder 123 M)
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280),
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                     attention_head_dim=8, norm_num_groups=32),
        "vae": dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4,
                    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32),
        "text_encoder": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                             projection_dim=768, hidden_act="quick_gelu"),
    },
}
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon")


def clip_tokenizer():
    """The real CLIP BPE tokenizer (49,408 tokens, 77 positions), built from the vocabulary file
    that ships inside the open_clip_torch wheel: no download."""
    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise EdgePersrepError("building a test Stable Diffusion needs the open_clip_torch package "
                               "(pip install open_clip_torch) for its CLIP vocabulary")
    with gzip.open(Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz") as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def random_sd(architecture: str = "tiny", seed: int = 0, device: str = "cpu", dtype=None) -> StableDiffusion:
    """A randomly initialised Stable Diffusion in memory (timing and memory are those of real weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if architecture not in ARCHITECTURES:
        raise EdgePersrepError(f"unknown architecture '{architecture}'; choose one of: {', '.join(ARCHITECTURES)}")
    config = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                                                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                                                **config["text_encoder"]))
    modules = (text_encoder, AutoencoderKL(**config["vae"]), UNet2DConditionModel(**config["unet"]))
    for module in modules:
        module.requires_grad_(False).eval().to(device)
        if dtype not in (None, torch.float32):
            module.to(dtype)
    return StableDiffusion(Path(f"random-{architecture}"), tokenizer, *modules, dict(SD15_SCHEDULER))


RANDOM_MARKER = "edge-persrep-random-weights.json"  # in a folder build_random_sd wrote: not a real model


def is_random_model(folder: str | Path) -> bool:
    """A Stable Diffusion folder `make-test-sd` wrote: random weights, whatever it draws means nothing."""
    return (Path(folder) / RANDOM_MARKER).is_file()


def build_random_sd(out: Path, architecture: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised Stable Diffusion folder (diffusers layout, marked as random) and return it."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    sd = random_sd(architecture, seed)
    pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / RANDOM_MARKER).write_text(json.dumps({"architecture": architecture, "seed": seed, "weights": "random"}))
    return out
