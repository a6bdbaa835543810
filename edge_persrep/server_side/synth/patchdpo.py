"""PatchDPO-style refinement of the DreamBooth model (Huang et al. 2024, arXiv 2412.03177).

A generated image is usually wrong in some patches, not as a whole. PatchDPO estimates each patch's
quality with a pretrained vision model (against the reference photos' patches) and trains the
generator with a loss weighted by it, rewarding good patches and penalising bad ones. Here, after
DreamBooth (`--refine patchdpo`):

1. Sample `samples` images from the DreamBooth-tuned model with the prompt bank (OUT/patchdpo/samples).
2. Each sample's patch quality, as the patch filter measures it (filtering.quality_map: the object
   located as the filter locates it, each of its patches' best cosine to the real object's
   patches), normalised to [0, 1] between the 10th and 90th percentile of all the samples' object
   patches: a patch is rewarded or penalised relative to what this model generates. Cells off the
   object weigh 1 (the scene is the prompt's, learned as before).
3. Continue training the DreamBooth LoRA on pairs (a reference photo, a sample) with the same noise
   and timestep: loss = mean(W_sample * err_sample) + mean(W_photo * err_photo), W_sample the
   sample's quality map at latent resolution, W_photo = 1 - the sample's mean object quality. Where
   the sample is faithful the model is pulled towards it; where it is not, towards the real photo
   instead of it. This is PatchDPO's `weighted_mse_loss` with region weights [1 - target map,
   generated map]; its pairs are aligned reconstructions of one image, ours are a photo and a new
   scene, so the photo's weight is one number per pair.

Resumable (the DreamBooth trainer's checkpoints), recorded in OUT/patchdpo/patchdpo.json (quality
statistics, loss, seconds). The refined LoRA replaces the DreamBooth one for sampling positives.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ...runtime.errors import EdgePersrepError
from ...runtime.files import atomic_write_json
from ...runtime.images import load_image
from .dreambooth import DreamBoothConfig, _Latents, _Trainer, load_tuned, weight_dtype
from .filtering import locate_object, quality_map, real_object

REFINE_METHODS = ("none", "patchdpo")


@dataclass(frozen=True)
class PatchDPOConfig:
    samples: int = 32  # generated images the refinement learns from
    steps: int = 100
    lr: float = 5e-5  # half DreamBooth's LoRA rate: a refinement, not a new fit
    low: float = 10.0  # quality percentiles mapped to weight 0 and 1
    high: float = 90.0

    def __post_init__(self):
        if self.samples < 1 or self.steps < 1:
            raise EdgePersrepError("--refine patchdpo needs at least 1 sample and 1 step")


def patch_weighted_loss(pred, target, weights):
    """PatchDPO's weighted MSE: mean over every element of weight * squared error; `weights`
    [B, 1, h, w] broadcast over the latent channels. Returns (loss, parts) like dreambooth_loss."""
    err = (pred.float() - target.float()) ** 2
    loss = (err * weights.to(err.dtype)).mean()
    half = len(err) // 2
    return loss, {"photos": (err[:half] * weights[:half]).mean().item(),
                  "samples": (err[half:] * weights[half:]).mean().item()}


def normalise(maps: Sequence[np.ndarray], low: float, high: float) -> list[np.ndarray]:
    """Quality maps (NaN off the object) -> weights in [0, 1]: (q - P_low) / (P_high - P_low),
    clipped, the percentiles over every sample's object patches; 1 off the object."""
    values = np.concatenate([m[~np.isnan(m)] for m in maps]) if maps else np.zeros(0)
    if len(values) == 0:
        return [np.ones_like(m) for m in maps]
    lo, hi = np.percentile(values, [low, high])
    span = max(float(hi - lo), 1e-6)
    return [np.where(np.isnan(m), 1.0, np.clip((m - lo) / span, 0.0, 1.0)).astype(np.float32) for m in maps]


class PatchPairs:
    """The refinement's training data, encoded once: the photos and the samples as latents, each
    sample's weight map at latent resolution, and the prompts (the instance prompt, then each
    sample's own). A draw is `batch` pairs: photos first, then their samples."""

    def __init__(self, sd, photos: Sequence[Image.Image], samples: Sequence[Image.Image], prompts: Sequence[str],
                 weights: Sequence[np.ndarray], config: DreamBoothConfig, category: str, device: str):
        import torch
        import torch.nn.functional as F

        dev, size, side = torch.device(device), sd.resolution, sd.resolution // sd.latent_factor
        dtype = weight_dtype(config.precision, device)
        self.photos = _Latents(sd, photos, size, dev, dtype)
        self.samples = _Latents(sd, samples, size, dev, dtype)
        maps = torch.from_numpy(np.stack(weights))[:, None]  # [S, 1, gh, gw]
        self.weights = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False)
        object_quality = [float(np.mean(w[w < 1.0])) if (w < 1.0).any() else 1.0 for w in weights]
        self.photo_weights = torch.tensor([1.0 - q for q in object_quality])  # learn the photo where the sample fails
        all_prompts = [config.instance_prompt(category)] + list(prompts)
        self.ids = sd.tokenize(all_prompts)
        self.prompt_states = sd.encode_prompts(all_prompts).float().cpu()
        self.photo_count, self.sample_count = len(photos), len(samples)

    def draw(self, rng: random.Random, batch: int):
        import torch

        photos = [rng.randrange(self.photo_count) for _ in range(batch)]
        samples = [rng.randrange(self.sample_count) for _ in range(batch)]
        latents = torch.cat([self.photos.sample(photos), self.samples.sample(samples)])
        side = self.weights.shape[-1]
        photo_weights = self.photo_weights[samples].view(-1, 1, 1, 1).expand(-1, 1, side, side)
        rows = [0] * batch + [1 + i for i in samples]
        return latents, rows, torch.cat([photo_weights, self.weights[samples]])

    @staticmethod
    def noise(latents, train_timesteps: int):
        """The same noise and timestep for the photo and the sample of a pair (as PatchDPO)."""
        import torch

        half = len(latents) // 2
        noise = torch.randn_like(latents[:half])
        t = torch.randint(0, train_timesteps, (half,))
        return torch.cat([noise, noise]), torch.cat([t, t])

    @staticmethod
    def loss(pred, target, weights):
        return patch_weighted_loss(pred, target, weights)


def refine(sd, photos: Sequence[Image.Image], masks, category: str, db: DreamBoothConfig, config: PatchDPOConfig,
           tuned_dir: Path, out_dir: Path, device: str, sample, embedder) -> dict:
    """Refine the DreamBooth LoRA in `sd` (loaded from `tuned_dir`) in place; returns the summary.
    `sample(request_dir, count)` -> (paths, prompts) makes the samples with the tuned model (resumable);
    `embedder` gives the patch features (the filter's Embedder)."""
    if db.mode != "lora":
        raise EdgePersrepError("--refine patchdpo continues a LoRA DreamBooth; use --dreambooth lora")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(config), "dreambooth": json.loads((tuned_dir / "dreambooth.json").read_text())["config"]}
    summary_path = out_dir / "patchdpo.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if {k: summary.get(k) for k in record} != json.loads(json.dumps(record)):
            raise EdgePersrepError(f"{out_dir}: refined with other settings; delete {out_dir} to refine again")
        sd.unet.delete_adapters("default")
        load_tuned(sd, out_dir, db)
        return summary

    paths, prompts = sample(out_dir, config.samples)  # 1. samples from the tuned model
    samples = [load_image(p) for p in paths]
    real = real_object(photos, embedder(photos), masks)  # 2. their patch quality
    maps = []
    for features in embedder(samples):
        mask, _ = locate_object(features, real)
        maps.append(quality_map(features, real, mask))
    weights = normalise(maps, config.low, config.high)
    object_q = np.concatenate([m[~np.isnan(m)] for m in maps]) if maps else np.zeros(0)

    for name, p in sd.unet.named_parameters():  # 3. continue the LoRA with the weighted loss
        p.requires_grad_("lora_" in name)
    every = min(db.checkpoint_every, max(1, config.steps // 4))  # a killed refinement loses at most a quarter
    trainer = _Trainer(sd, replace(db, steps=config.steps, lr=config.lr, prior_weight=0.0, checkpoint_every=every),
                       device, out_dir, add_adapters=False)
    data = PatchPairs(sd, photos, samples, prompts, weights, db, category, device)
    first_step, losses, seconds = trainer.run(data)
    trainer.finish()
    summary = {**record, "samples": len(samples), "steps_run": config.steps - first_step,
               "seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, config.steps - first_step), 4),
               "object_patch_quality": {"mean": round(float(object_q.mean()), 4) if len(object_q) else None,
                                        "p10": round(float(np.percentile(object_q, 10)), 4) if len(object_q) else None,
                                        "p90": round(float(np.percentile(object_q, 90)), 4) if len(object_q) else None},
               "samples_without_object": int(sum(not (~np.isnan(m)).any() for m in maps)),
               "mean_photo_weight": round(float(data.photo_weights.mean()), 4),
               "loss_first10_mean": round(float(np.mean([x[0] for x in losses[:10]])), 6),
               "loss_last10_mean": round(float(np.mean([x[0] for x in losses[-10:]])), 6)}
    atomic_write_json(out_dir / "loss.json", {"columns": ["total", "photos", "samples"], "loss": losses})
    atomic_write_json(summary_path, summary)
    return summary
