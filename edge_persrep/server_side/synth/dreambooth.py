"""DreamBooth: teach Stable Diffusion the user's object under a rare token ("a photo of sks dog").

The method, step by step (Ruiz et al. 2023; the paper's settings in `DreamBoothConfig`):
1. Encode the real photos (and their mirror images) and the class images to VAE latents, once.
2. Each step: noise a photo's latents at a random timestep and ask the UNet, conditioned on the
   instance prompt, to predict that noise; do the same for a class image with the class prompt.
3. Loss = instance MSE (only on object pixels for masked DreamBooth) + prior_weight x class MSE.
   The class term (prior preservation) keeps the model able to draw *other* members of the
   category, which we need for negatives and varied scenes.
4. Train LoRA adapters (default; fits an 8 GB GPU) or the whole UNet (the paper: lr 2e-6,
   400 steps), optionally the text encoder too. Mixed precision and gradient checkpointing on CUDA.
The run checkpoints every `checkpoint_every` steps and resumes; the result is saved as LoRA weights
(diffusers format, loadable with `pipe.load_lora_weights`) or as a full UNet folder.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...runtime.errors import EdgePersrepError
from ...runtime.files import atomic_write_json
from ..options import DIFFUSION_PRECISIONS, DREAMBOOTH_MODES
from .sd_models import StableDiffusion

LORA_TARGETS_UNET = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_TARGETS_TEXT = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class DreamBoothConfig:
    mode: str = "lora"  # lora (default: consumer GPUs) | full (the paper)
    steps: int = 400  # paper: 400
    lr: float | None = None  # None: 1e-4 for LoRA, 2e-6 for full (paper)
    rank: int = 16  # LoRA rank (alpha = rank)
    train_text_encoder: bool = False  # paper: True (full); costs memory
    prior_weight: float = 1.0  # paper: 1.0
    class_images: int = 200  # paper: 200
    token: str = "sks"  # rare token the object is bound to
    batch_size: int = 1  # instance images per step (plus as many class images)
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    gradient_checkpointing: bool | None = None  # None: on for CUDA
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.mode not in DREAMBOOTH_MODES:
            raise EdgePersrepError(f"DreamBooth mode '{self.mode}': use lora or full")
        if self.precision not in DIFFUSION_PRECISIONS:
            raise EdgePersrepError(f"precision '{self.precision}': use auto, fp32, fp16 or bf16")
        if self.lr is None:
            self.lr = 1e-4 if self.mode == "lora" else 2e-6
        if self.steps < 1 or self.batch_size < 1:
            raise EdgePersrepError("DreamBooth steps and batch size must be at least 1")

    def subject(self, category: str) -> str:
        return f"{self.token} {category}"

    def instance_prompt(self, category: str) -> str:
        return f"a photo of {self.subject(category)}"


def class_prompt(category: str) -> str:
    """The un-tuned model's prompt for class images and negatives (paper: "a photo of a {category}")."""
    return f"a photo of a {category}"


def check_precision(precision: str, device: str) -> None:
    """fp16/bf16 training is CUDA-only here: refuse it on a CPU before anything is loaded."""
    if precision in ("fp16", "bf16") and device != "cuda":
        raise EdgePersrepError(f"--precision {precision} needs a CUDA GPU (this run is on {device}); "
                               "use --precision fp32 or auto on a CPU")


def weight_dtype(precision: str, device: str):
    import torch

    check_precision(precision, device)
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


# --- the loss --------------------------------------------------------------------------------

def dreambooth_loss(pred, target, instance_count: int, masks=None, prior_weight: float = 1.0):
    """Prior-preserving (and optionally masked) DreamBooth loss.

    pred, target: [B, C, h, w]; the first `instance_count` rows are the object's photos, the rest are
    class images. masks: [instance_count, 1, h, w], 1 = object. Instance term: mean squared error
    over object pixels only (background pixels contribute nothing, so no gradient) or over all
    pixels without masks. Class term: plain MSE, times `prior_weight`. Returns (loss, parts).
    """
    err = (pred.float() - target.float()) ** 2
    instance = err[:instance_count]
    if masks is not None:
        weight = masks.to(err.dtype).expand_as(instance)
        instance_loss = (instance * weight).sum() / weight.sum().clamp_min(1.0)
    else:
        instance_loss = instance.mean()
    if instance_count == err.shape[0]:
        return instance_loss, {"instance": instance_loss.item(), "prior": 0.0}
    prior_loss = err[instance_count:].mean()
    return instance_loss + prior_weight * prior_loss, {"instance": instance_loss.item(), "prior": prior_loss.item()}


def latent_mask(mask: np.ndarray, size: int, latent_side: int):
    """A photo's object mask, cropped like the photo, at latent resolution: a latent cell counts as
    object if any object pixel falls in it (so the object's edges keep their loss)."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.asarray(center_square(Image.fromarray(mask.astype(np.uint8) * 255), size)) > 127)
    return (F.interpolate(m[None, None].float(), size=(latent_side, latent_side), mode="area") > 0).float()[0]


def center_square(image: Image.Image, size: int) -> Image.Image:
    """DreamBooth's preprocessing: shorter side to `size`, centre crop."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


# --- training --------------------------------------------------------------------------------

class _Latents:
    """VAE latent distributions (mean, std) of a fixed image set; a fresh sample each draw."""

    def __init__(self, sd: StableDiffusion, images: Sequence[Image.Image], size: int, device, dtype):
        import torch

        means, stds = [], []
        with torch.no_grad():
            for image in images:
                x = torch.from_numpy(np.asarray(center_square(image.convert("RGB"), size), np.float32) / 127.5 - 1.0)
                dist = sd.vae.encode(x.permute(2, 0, 1)[None].to(device, sd.vae.dtype)).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(dist.std.float().cpu())
        self.mean, self.std = torch.cat(means), torch.cat(stds)
        self.scale = float(getattr(sd.vae.config, "scaling_factor", 0.18215))

    def sample(self, indices: list[int]):
        import torch

        return (self.mean[indices] + self.std[indices] * torch.randn_like(self.mean[indices])) * self.scale


def _add_lora(sd: StableDiffusion, config: DreamBoothConfig) -> None:
    from peft import LoraConfig

    sd.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                   target_modules=LORA_TARGETS_UNET))
    if config.train_text_encoder:
        sd.text_encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                               target_modules=LORA_TARGETS_TEXT))


def _trainable(sd: StableDiffusion, config: DreamBoothConfig):
    import torch

    if config.mode == "full":
        sd.unet.float().requires_grad_(True)  # fp32 master weights; autocast does the half-precision maths
        if config.train_text_encoder:
            sd.text_encoder.float().requires_grad_(True)
    modules = torch.nn.ModuleDict({"unet": sd.unet, "text_encoder": sd.text_encoder})
    for p in modules.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights train in fp32 even when the base is fp16
    return modules


def fine_tune(sd: StableDiffusion, photos: Sequence[Image.Image], class_images: Sequence[Image.Image],
              category: str, config: DreamBoothConfig, out_dir: Path, device: str = "cpu",
              masks: Sequence[np.ndarray] | None = None) -> dict:
    """Fine-tune `sd` in place on `photos`; save the result under `out_dir` and return a summary.

    A finished run (out_dir/dreambooth.json with the same config) is loaded instead of retrained;
    an interrupted one resumes from its last checkpoint.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(config), "category": category, "photos": len(photos), "masked": masks is not None,
              "class_images": len(class_images)}
    finished = _finished(out_dir, record)
    if finished is not None:
        load_tuned(sd, out_dir, config)
        return finished
    data = _TrainingData(sd, photos, class_images, category, config, device, masks)  # 1. encode once
    trainer = _Trainer(sd, config, device, out_dir)  # 2. adapters, optimizer, precision
    first_step, losses, seconds = trainer.run(data)  # 3. the steps, checkpointed
    trainer.finish()  # 4. back to inference, saved
    summary = {**record, "steps_run": config.steps - first_step, "seconds": round(seconds, 1),
               "seconds_per_step": round(seconds / max(1, config.steps - first_step), 4),
               "loss_first10_mean": round(float(np.mean([x[0] for x in losses[:10]])), 6),
               "loss_last10_mean": round(float(np.mean([x[0] for x in losses[-10:]])), 6),
               "peak_gpu_memory_gb": trainer.peak_memory_gb(), "resolution": sd.resolution, "device": device,
               "precision": str(trainer.dtype).replace("torch.", "")}
    atomic_write_json(out_dir / "loss.json", {"columns": ["total", "instance", "prior"], "loss": losses})
    atomic_write_json(out_dir / "dreambooth.json", summary)
    return summary


def _finished(out_dir: Path, record: dict) -> dict | None:
    """The summary of a finished run with these settings; None if there is none; refuses other settings."""
    path = out_dir / "dreambooth.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if {k: summary.get(k) for k in record} != json.loads(json.dumps(record)):
        raise EdgePersrepError(f"{out_dir}: DreamBooth was trained with other settings; delete {out_dir} to retrain")
    return summary


class _TrainingData:
    """What every step draws from, encoded once: the photos (and their mirror images) and the class
    images as latent distributions, the masks at latent resolution, the two prompts."""

    def __init__(self, sd: StableDiffusion, photos, class_images, category: str, config: DreamBoothConfig,
                 device: str, masks=None):
        import torch

        dev, size = torch.device(device), sd.resolution
        dtype = weight_dtype(config.precision, device)
        mirrored = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in photos]
        self.photo_count, self.class_count = len(photos), len(class_images)
        self.instance = _Latents(sd, list(photos) + mirrored, size, dev, dtype)
        self.prior = _Latents(sd, class_images, size, dev, dtype) if class_images and config.prior_weight > 0 else None
        self.masks = None
        if masks is not None:
            flat = [latent_mask(m, size, size // sd.latent_factor) for m in masks]
            self.masks = torch.stack(flat + [m.flip(-1) for m in flat])
        prompts = [config.instance_prompt(category), class_prompt(category)]
        self.ids = sd.tokenize(prompts)  # rows 0 and 1: what each instance / class image is conditioned on
        self.prompt_states = sd.encode_prompts(prompts).float().cpu()  # used as is when the text encoder is frozen
        self.batch_size, self.prior_weight = config.batch_size, config.prior_weight

    def draw(self, rng: random.Random, batch: int):
        """A step's latents (batch photos or mirror images, then batch class images), the prompt row
        of each, and the photos' masks (None without masks)."""
        import torch

        chosen = [rng.randrange(2 * self.photo_count) for _ in range(batch)]
        latents = [self.instance.sample(chosen)]
        if self.prior is not None:
            latents.append(self.prior.sample([rng.randrange(self.class_count) for _ in range(batch)]))
        rows = [0] * batch + ([1] * batch if self.prior is not None else [])
        return torch.cat(latents), rows, self.masks[chosen] if self.masks is not None else None

    @staticmethod
    def noise(latents, train_timesteps: int):
        """Each row its own noise and timestep."""
        import torch

        return torch.randn_like(latents), torch.randint(0, train_timesteps, (len(latents),))

    def loss(self, pred, target, masks):
        return dreambooth_loss(pred, target, self.batch_size, masks, self.prior_weight)


class _Trainer:
    """The training state of one DreamBooth run: trainable modules (LoRA or full), optimizer,
    mixed precision, gradient checkpointing and the checkpoints a killed run resumes from."""

    def __init__(self, sd: StableDiffusion, config: DreamBoothConfig, device: str, out_dir: Path,
                 add_adapters: bool = True):
        """`add_adapters=False`: train the LoRA already in `sd` (its parameters marked trainable)."""
        import torch
        from diffusers import DDPMScheduler

        from ..checkpoints import Checkpoints

        self.sd, self.config, self.device, self.dev = sd, config, device, torch.device(device)
        self.dtype = weight_dtype(config.precision, device)
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.noise_scheduler = DDPMScheduler.from_config(sd.scheduler_config)
        self.base_dtypes = (sd.unet.dtype, sd.text_encoder.dtype)
        if config.mode == "lora" and add_adapters:
            _add_lora(sd, config)
        self.modules = _trainable(sd, config)
        self.params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=1e-2)
        self.checkpointing = (config.gradient_checkpointing if config.gradient_checkpointing is not None
                              else device == "cuda")
        if self.checkpointing:
            sd.unet.enable_gradient_checkpointing()
            if config.train_text_encoder:  # transformers 5 renamed it; older releases have only the old name
                enable = getattr(sd.text_encoder, "activation_checkpointing_enable", None)
                (enable or sd.text_encoder.gradient_checkpointing_enable)()
        sd.unet.train()
        sd.text_encoder.train(config.train_text_encoder)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and device == "cuda")
        self.autocast = torch.autocast(device_type=self.dev.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.checkpoints = Checkpoints(out_dir, config)
        self.out_dir = out_dir

    def run(self, data) -> tuple[int, list, float]:
        """All remaining steps; returns (the step it resumed from, every step's losses, seconds)."""
        config = self.config
        first_step, losses = self.checkpoints.restore(self.modules, self.optimizer, self.rng, self.scaler)
        started = time.time()
        for step in tqdm(range(first_step, config.steps), desc="dreambooth", unit="step", initial=first_step,
                         total=config.steps):
            losses.append(self.step(data))
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                self.checkpoints.save(step + 1, losses, self.modules, self.optimizer, self.rng, self.scaler)
        return first_step, losses, time.time() - started

    def step(self, data) -> list[float]:
        """One optimizer step: noise the drawn latents, predict the noise, take the data's loss (the
        DreamBooth loss; patchdpo.PatchPairs: the patch-weighted one)."""
        import torch

        sd, config, dev, scheduler = self.sd, self.config, self.dev, self.noise_scheduler
        latents, rows, masks = data.draw(self.rng, config.batch_size)
        noise, t = data.noise(latents, scheduler.config.num_train_timesteps)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        with self.autocast:
            if config.train_text_encoder:
                states = sd.text_encoder(data.ids[rows].to(dev))[0]
            else:
                states = data.prompt_states[rows].to(dev, self.dtype)
            pred = sd.unet(noisy.to(dev, self.dtype), t.to(dev), states).sample
        loss, parts = data.loss(pred, target.to(dev), masks.to(dev) if masks is not None else None)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return [round(loss.item(), 6)] + [round(v, 6) for v in parts.values()]

    def finish(self) -> None:
        """Back to inference (frozen, the sampling precision) with the result saved and the
        checkpoints gone."""
        sd = self.sd
        sd.unet.eval()
        sd.text_encoder.eval()
        if self.checkpointing:
            sd.unet.disable_gradient_checkpointing()
        for module in (sd.unet, sd.text_encoder):
            module.requires_grad_(False)
        save_tuned(sd, self.out_dir, self.config)
        for module, base_dtype in zip((sd.unet, sd.text_encoder), self.base_dtypes):
            if module.dtype != base_dtype:
                module.to(base_dtype)
        self.checkpoints.clear()

    def peak_memory_gb(self) -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None


# --- saving and loading the result -------------------------------------------------------------

def save_tuned(sd: StableDiffusion, out_dir: Path, config: DreamBoothConfig) -> None:
    """LoRA: `pytorch_lora_weights.safetensors` (diffusers format: `pipe.load_lora_weights(out_dir)`).
    Full: `unet/` (and `text_encoder/`) folders in diffusers layout."""
    if config.mode == "lora":
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        text = (convert_state_dict_to_diffusers(get_peft_model_state_dict(sd.text_encoder))
                if config.train_text_encoder else None)
        StableDiffusionPipeline.save_lora_weights(
            out_dir, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(sd.unet)),
            text_encoder_lora_layers=text, safe_serialization=True)
    else:
        sd.unet.save_pretrained(out_dir / "unet", safe_serialization=True)
        if config.train_text_encoder:
            sd.text_encoder.save_pretrained(out_dir / "text_encoder", safe_serialization=True)


def load_tuned(sd: StableDiffusion, out_dir: Path, config: DreamBoothConfig) -> None:
    """Put a saved DreamBooth result into `sd` (fresh from `load_sd`)."""
    if config.mode == "lora":
        from diffusers import StableDiffusionPipeline as Pipe

        state, alphas = Pipe.lora_state_dict(out_dir, weight_name="pytorch_lora_weights.safetensors")
        Pipe.load_lora_into_unet(state, alphas, sd.unet, adapter_name="default")
        if config.train_text_encoder:
            Pipe.load_lora_into_text_encoder(state, alphas, sd.text_encoder, prefix="text_encoder",
                                             adapter_name="default")
    else:
        from diffusers import UNet2DConditionModel

        sd.unet.load_state_dict(UNet2DConditionModel.from_pretrained(out_dir / "unet").state_dict())
        if config.train_text_encoder:
            from transformers import CLIPTextModel

            sd.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(out_dir / "text_encoder").state_dict())
    for module in (sd.unet, sd.text_encoder):
        module.requires_grad_(False).eval()
