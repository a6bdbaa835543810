"""Contrastive LoRA fine-tuning (the paper's recipe, DESIGN.md section 4).

Triplets: anchor = a real photo (augmented), positive = a synthetic positive (augmented),
negatives = every negative in the batch. Loss: InfoNCE at tau = 0.07 on unit-normalised global
features. LoRA r 16, alpha 0.5, dropout 0.3 on the backbone's registered targets; Adam lr 3e-4,
betas (0.5, 0.999); batch 16; 2 epochs over 4,500 triplets.

CPU speed-up (`cache_trunk`): the frozen trunk (everything before the first LoRA'd block) is run
once per augmented view, not once per step. Each image gets `views` augmentations up front, drawn
from the same paper augmentations; steps then sample from those views. This changes only how
often augmentations are redrawn, not what they are.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json
from ..runtime.images import load_image
from .backbones import Backbone
from .checkpoints import Checkpoints
from .transforms import paper_augment


@dataclass(frozen=True)
class TrainConfig:
    triplets: int = 4500  # paper: 3 anchors x 450 positives x 1,000 negatives -> 4,500 triplets
    epochs: int = 2
    batch_size: int = 16
    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    tau: float = 0.07
    lora_r: int = 16
    lora_alpha: float = 0.5  # paper's value: a LoRA scale of alpha / r = 1/32
    lora_dropout: float = 0.3
    cache_trunk: bool = False
    views: int = 8  # augmented views per image when cache_trunk (anchors get 8x this)
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints: a killed run resumes from the last one
    positives: int = 450  # synthetic positives to generate (paper: ~450)

    @property
    def steps(self) -> int:
        return math.ceil(self.epochs * self.triplets / self.batch_size)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Sized for a 2-core CPU (about 2 minutes on Lite0): 160 steps of 16 triplets, trunk cached.
    # alpha = r (LoRA scale 1): at the paper's 1/32 scale, 160 steps barely move the features.
    "quick": TrainConfig(triplets=2560, epochs=1, lora_alpha=16.0, cache_trunk=True, views=4,
                         positives=96),
}


def get_preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise EdgePersrepError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE on unit vectors: anchor i's logits are [a_i . p_i, a_i . n_1, ..., a_i . n_B] / tau,
    target index 0; mean over anchors. anchor, positive [B, D]; negatives [N, D]."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    neg = anchor @ negatives.T
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


def add_lora(backbone: Backbone, config: TrainConfig):
    """Wrap the backbone's timm model with peft LoRA on the registered targets (in place)."""
    from peft import LoraConfig, get_peft_model

    pattern = "(" + "|".join(backbone.spec.lora_targets) + ")"
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      bias="none", target_modules=pattern)
    peft_model = get_peft_model(backbone.model, lora)
    backbone.model = peft_model.base_model.model  # same object, now holding LoRA layers
    return peft_model


def to_tensor(image: Image.Image, backbone: Backbone, size: int) -> torch.Tensor:
    pre = backbone.spec.preprocess
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)


class Views:
    """Augmented views of a set of images -> trunk features, cached up front or drawn per step."""

    def __init__(self, backbone: Backbone, images: Sequence[Image.Image], config: TrainConfig, views: int,
                 rng: random.Random, device: torch.device, desc: str):
        self.backbone, self.images, self.rng, self.device = backbone, list(images), rng, device
        self.size = backbone.spec.preprocess.train_size
        self.cache = None
        if config.cache_trunk:
            chunks = []
            todo = [im for im in self.images for _ in range(views)]
            for start in tqdm(range(0, len(todo), 32), desc=f"cache {desc}", leave=False):
                chunks.append(self._trunk(todo[start:start + 32]))
            self.cache = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.cache) if self.cache is not None else len(self.images)

    @torch.no_grad()
    def _trunk(self, images: Sequence[Image.Image]) -> torch.Tensor:
        views = [paper_augment(im, self.rng, self.size)[0] for im in images]
        x = torch.stack([to_tensor(v, self.backbone, self.size) for v in views])
        return self.backbone.trunk(x.to(self.device))

    def sample(self, indices: Sequence[int]) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[list(indices)]
        return self._trunk([self.images[i] for i in indices])


def train(backbone: Backbone, anchors: Sequence[Image.Image], positives: Sequence[Image.Image | Path],
          negatives: Sequence[Image.Image | Path], config: TrainConfig, out_dir: Path,
          device: str = "cpu") -> dict:
    """Fine-tune `backbone` with LoRA, save the adapter and loss curve under `out_dir`, and return
    with the LoRA merged into `backbone` (ready to export) and a summary for the bundle manifest."""
    if len(anchors) < 1 or len(positives) < 1 or len(negatives) < 1:
        raise EdgePersrepError("training needs at least one anchor photo, one positive and one negative; "
                               "pass --negatives DIR with photos of other objects of the same category")
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    dev = torch.device(device)
    positives = [p if isinstance(p, Image.Image) else load_image(p) for p in positives]
    negatives = [n if isinstance(n, Image.Image) else load_image(n) for n in negatives]
    peft_model = add_lora(backbone, config)
    backbone.to(dev).eval()
    for name, module in backbone.named_modules():  # BN stays frozen (eval); only LoRA dropout trains
        if "lora_dropout" in name:
            module.train()
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    anchor_views = Views(backbone, anchors, config, config.views * 8, rng, dev, "anchors")
    positive_views = Views(backbone, positives, config, max(1, config.views // 2), rng, dev, "positives")
    negative_views = Views(backbone, negatives, config, config.views, rng, dev, "negatives")
    image_hw = (backbone.spec.preprocess.train_size,) * 2

    def embed(trunk_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(backbone.head(trunk_features, image_hw)[0], dim=1)

    checkpoints = Checkpoints(out_dir, config)
    first_step, losses = checkpoints.restore(backbone, optimizer, rng)
    started = time.time()
    b = config.batch_size
    for step in tqdm(range(first_step, config.steps), desc="train", unit="step", initial=first_step,
                     total=config.steps):
        a = embed(anchor_views.sample([rng.randrange(len(anchor_views)) for _ in range(b)]))
        p = embed(positive_views.sample([rng.randrange(len(positive_views)) for _ in range(b)]))
        n = embed(negative_views.sample([rng.randrange(len(negative_views)) for _ in range(b)]))
        loss = info_nce(a, p, n, config.tau)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 5))
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            checkpoints.save(step + 1, losses, backbone, optimizer, rng)
    backbone.eval()
    seconds = time.time() - started
    peft_model.save_pretrained(str(out_dir / "adapter"))
    checkpoints.clear()
    backbone.model = peft_model.merge_and_unload()
    backbone.cpu().eval()
    atomic_write_json(out_dir / "loss.json", {"loss": losses})
    summary = {"steps": config.steps, "seconds": round(seconds, 1), "loss_first": losses[0], "loss_last": losses[-1],
               "loss_last10_mean": round(float(np.mean(losses[-10:])), 5), "anchors": len(anchors),
               "positives": len(positives), "negatives": len(negatives), "config": asdict(config)}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def load_adapter(backbone: Backbone, adapter_dir: Path) -> None:
    """Attach a saved LoRA adapter (peft format, safetensors) and merge it into the backbone."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise EdgePersrepError(f"{adapter_dir}: no LoRA adapter here (adapter_config.json missing); train first")
    peft_model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
    backbone.model = peft_model.merge_and_unload()
    backbone.eval()
