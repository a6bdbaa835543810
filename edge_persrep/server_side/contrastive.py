"""Contrastive LoRA fine-tuning (the paper's recipe, DESIGN.md section 4).

Triplets: anchor = a real photo (augmented), positive = a synthetic positive (augmented),
negatives = every negative in the batch. Loss: InfoNCE at tau = 0.07 on unit-normalised global
features. LoRA r 16, alpha 0.5, dropout 0.3 on the backbone's registered targets; Adam lr 3e-4,
betas (0.5, 0.999); batch 16; 2 epochs over 4,500 triplets.

The trained update can be taken further where it is merged (`merge_scale`, set_lora_scale): the
`quick` preset's 160 steps stop short of where its update points, and merging it at 1.5x was the
best of 0.5-3 on the validation split of the identity-disjoint benchmark (a weight-space step the
other way from WiSE-FT's interpolation towards the pretrained model, which lost AP there).

In-context positives (synth `context`: the object pasted small at a known box on a negative) are
scored where the object is, as the runtime's region score does: their embedding is the patch grid
pooled inside the box, and the same grid pooled outside the box (the negative it was pasted on) is
one more negative. Pooling the whole image instead pulls the object towards the look-alike it was
pasted on (measured: dog AP 0.988 -> 0.585 on the identity-disjoint benchmark).

CPU speed-ups, none of which changes the recipe:
- `cache_trunk`: the frozen trunk (everything before the first LoRA'd block) is run once per
  augmented view, not once per step. Each image gets `views` augmentations up front, drawn from the
  same paper augmentations; steps then sample from those views. This changes only how often
  augmentations are redrawn, not what they are.
- LoRA dropout draws its masks 16 bits at a time (`FastDropout`): torch's CPU dropout draws a
  random number per element, which was 28% of a quick step on Lite0 (profiled).
- Convolutional backbones train in channels-last memory layout (oneDNN's native one on CPUs).
- Torch runs on the cores other processes leave free (runtime/threads.CoreShare), so OpenMP's
  threads can spin briefly (15% faster alone) without spinning against another process.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json
from ..runtime.images import load_image
from ..runtime.threads import CoreShare
from .backbones import Backbone
from .checkpoints import Checkpoints
from .options import TRAIN_PRECISIONS
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
    precision: str = "fp32"  # "bf16": the trained layers' forward under bf16 autocast (TRAIN_PRECISIONS)
    merge_scale: float = 1.0  # the trained LoRA's update times this where it is saved and merged (set_lora_scale)

    @property
    def steps(self) -> int:
        return math.ceil(self.epochs * self.triplets / self.batch_size)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # Sized for a 2-core CPU (under 2 minutes end to end on Lite0 in bf16): 160 steps of 16 triplets,
    # trunk cached. 120 steps from 2026-11-30 until OpenMP's brief spin (runtime/threads.py) made
    # 160 fit again: at 120 the same AP and `present` accuracy, pointing 0.869 against 0.884 (README
    # "A faster quick preset").
    # alpha = r (LoRA scale 1): at the paper's 1/32 scale, so few steps barely move the features.
    # merge_scale 1.5: its 160 steps stop short; the update taken 1.5x as far (no cost at run time)
    # was best of 0.5-3 on the identity-disjoint benchmark's validation split (README "Taking the
    # update further").
    "quick": TrainConfig(triplets=2560, epochs=1, lora_alpha=16.0, cache_trunk=True, views=4,
                         positives=96, merge_scale=1.5),
}


def get_preset(name: str, **overrides) -> TrainConfig:
    if name not in PRESETS:
        raise EdgePersrepError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float,
             owners: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE on unit vectors: anchor i's logits are [a_i . p_i, a_i . n_1, ..., a_i . n_B] / tau,
    target index 0; mean over anchors. anchor, positive [B, D]; negatives [N, D].
    `owners` [B] (joint training of several objects): row i is object owners[i]'s anchor and
    positive, and anchor i's negatives also include the batch's positives of the *other* objects,
    so each object is told apart from the others as well as from the shared negatives."""
    pos = (anchor * positive).sum(dim=1, keepdim=True)
    logits = [pos, anchor @ negatives.T]
    if owners is not None:
        same = owners[:, None] == owners[None, :]
        logits.append((anchor @ positive.T).masked_fill(same, float("-inf")))
    return F.cross_entropy(torch.cat(logits, dim=1) / tau,
                           torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


class FastDropout(nn.Module):
    """nn.Dropout(p) on CPU with masks drawn 16 bits per element, four elements per 64-bit random
    word: the keep probability is (1 - p) to within 1/65536, the scaling the same. torch's CPU
    dropout draws one random number per element (77-110 ms for one [48, 672, 14, 14] LoRA input,
    this 21 ms). Other devices use torch's dropout."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        words = torch.randint(-2**63, 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
        bits = words.view(torch.int16)[:x.numel()].as_strided(x.shape, x.stride())  # x's layout: iid either way
        keep = bits < -32768 + round((1 - self.p) * 65536)
        return torch.where(keep, x, 0.0).mul_(1 / (1 - self.p))


def set_lora_scale(peft_model, lora_alpha: float) -> None:
    """Every LoRA layer's scale (and the saved config's alpha) set to lora_alpha / r. Training runs
    at the config's `lora_alpha`; the adapter is saved and merged at `lora_alpha * merge_scale`, so
    every reader of the adapter folder (the merged bundle, the adapter export, the runtime's
    adapter path) applies the same update. A continued adapter trains at the training scale again."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.scaling:
                module.lora_alpha[adapter] = lora_alpha
                module.set_scale(adapter, 1.0)
    for config in peft_model.peft_config.values():
        config.lora_alpha = lora_alpha


def add_lora(backbone: Backbone, config: TrainConfig):
    """Wrap the backbone's timm model with peft LoRA on the registered targets (in place), its
    dropouts replaced by FastDropout."""
    from peft import LoraConfig, get_peft_model

    pattern = "(" + "|".join(backbone.spec.lora_targets) + ")"
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      bias="none", target_modules=pattern)
    peft_model = get_peft_model(backbone.model, lora)
    backbone.model = peft_model.base_model.model  # same object, now holding LoRA layers
    _fast_dropouts(backbone.model)
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
                 rng: random.Random, device: torch.device, desc: str, cores: CoreShare):
        self.backbone, self.images, self.rng, self.device = backbone, list(images), rng, device
        self.size = backbone.spec.preprocess.train_size
        self.views = views if config.cache_trunk else 1
        self.cache = None
        if config.cache_trunk:
            chunks = []
            todo = [im for im in self.images for _ in range(views)]
            for start in tqdm(range(0, len(todo), 32), desc=f"cache {desc}", leave=False):
                cores.check()
                chunks.append(self._trunk(todo[start:start + 32]))
            self.cache = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.cache) if self.cache is not None else len(self.images)

    @torch.no_grad()
    def _trunk(self, images: Sequence[Image.Image]) -> torch.Tensor:
        views = [paper_augment(im, self.rng, self.size)[0] for im in images]
        x = torch.stack([to_tensor(v, self.backbone, self.size) for v in views])
        return self.backbone.trunk(x.to(self.device))

    def rows_of(self, images: Sequence[int]) -> list[int]:
        """The rows `sample` takes that show these images (each cached view of them)."""
        return [i * self.views + v for i in images for v in range(self.views)]

    def sample(self, indices: Sequence[int]) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[list(indices)]
        return self._trunk([self.images[i] for i in indices])


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels, exclusive


def box_cells(box: Box, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """The grid cells [h, w] whose centres fall inside `box` (at least the cell of its centre)."""
    (ih, iw), (gh, gw) = image_hw, grid_hw
    x0, y0, x1, y1 = box
    cx, cy = (np.arange(gw) + 0.5) * iw / gw, (np.arange(gh) + 0.5) * ih / gh
    cells = ((y0 <= cy) & (cy < y1))[:, None] & ((x0 <= cx) & (cx < x1))[None, :]
    if not cells.any():
        cells[min(gh - 1, int((y0 + y1) / 2 * gh / ih)), min(gw - 1, int((x0 + x1) / 2 * gw / iw))] = True
    return cells


def pool_inside_and_outside(grid: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit mean features of a grid [B, h, w, C] inside and outside bool cell masks [B, h, w]."""
    inside = cells.unsqueeze(-1).to(grid.dtype)
    pooled_in = (grid * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2)).clamp_min(1)
    pooled_out = (grid * (1 - inside)).sum(dim=(1, 2)) / (1 - inside).sum(dim=(1, 2)).clamp_min(1)
    return F.normalize(pooled_in, dim=1), F.normalize(pooled_out, dim=1)


class FramedViews:
    """In-context positives with their object's box: each image and its mirror, resized to the
    training size (no crop, so the box stays where it is), trunk features cached."""

    def __init__(self, backbone: Backbone, images: Sequence[Image.Image], boxes: Sequence[Box],
                 device: torch.device):
        self.size = size = backbone.spec.preprocess.train_size
        views, self.boxes = [], []
        for image, (x0, y0, x1, y1) in zip(images, boxes):
            sx, sy = size / image.width, size / image.height
            box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            views += [image, image.transpose(Image.FLIP_LEFT_RIGHT)]
            self.boxes += [box, (size - box[2], box[1], size - box[0], box[3])]
        with torch.no_grad():
            self.cache = torch.cat([backbone.trunk(torch.stack([to_tensor(v, backbone, size) for v in
                                                                views[i:i + 32]]).to(device))
                                    for i in range(0, len(views), 32)])

    def __len__(self) -> int:
        return len(self.cache)

    def sample(self, indices: Sequence[int], grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        cells = np.stack([box_cells(self.boxes[i], (self.size, self.size), grid_hw) for i in indices])
        return self.cache[list(indices)], torch.from_numpy(cells)


def in_context_rows(batch: int, in_context: int, positives: int) -> int:
    """A batch's positives scored in context: their share of all positives, at least one if there
    are any, at most half the batch (all in context: the whole images fill the other half)."""
    if not in_context:
        return 0
    return min(max(1, round(batch * in_context / positives)), batch // 2)


def train(backbone: Backbone, anchors: Sequence[Image.Image], positives: Sequence[Image.Image | Path],
          negatives: Sequence[Image.Image | Path], config: TrainConfig, out_dir: Path,
          device: str = "cpu", positive_boxes: Sequence[Box | None] | None = None,
          owners: tuple[Sequence[int], Sequence[int]] | None = None, start_from: Path | None = None) -> dict:
    """Fine-tune `backbone` with LoRA, save the adapter and loss curve under `out_dir`, and return
    with the LoRA merged into `backbone` (ready to export) and a summary for the bundle manifest.
    `positive_boxes`: per positive, the box of an in-context object (scored inside it, see above)
    or None (scored on the whole image, as the paper). `owners`: (object index of each anchor, of
    each positive) to train several objects into one LoRA (info_nce's `owners`): each batch row
    draws an object, then its anchor and positive. `start_from`: an adapter folder to continue
    (adding an object to a joint run) instead of a fresh LoRA."""
    if len(anchors) < 1 or len(positives) < 1 or len(negatives) < 1:
        raise EdgePersrepError("training needs at least one anchor photo, one positive and one negative; "
                               "pass --negatives DIR with photos of other objects of the same category")
    if owners is not None and positive_boxes is not None and any(b is not None for b in positive_boxes):
        raise EdgePersrepError("in-context positives (--synth context) train one object at a time; "
                               "use --synth augment for a joint run")
    check_precision(config.precision, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    dev = torch.device(device)
    positives = [p if isinstance(p, Image.Image) else load_image(p) for p in positives]
    negatives = [n if isinstance(n, Image.Image) else load_image(n) for n in negatives]
    boxes = list(positive_boxes) if positive_boxes is not None else [None] * len(positives)
    framed = [(image, box) for image, box in zip(positives, boxes) if box is not None]
    whole = [image for image, box in zip(positives, boxes) if box is None]
    counts = {"positives": len(positives), **({"in_context_positives": len(framed)} if framed else {})}
    positives = whole or positives  # all in context: the whole images serve too
    peft_model = add_lora(backbone, config) if start_from is None else _continue_lora(backbone, start_from)
    set_lora_scale(peft_model, config.lora_alpha)  # a continued adapter was saved at the merge scale
    layout = torch.channels_last if backbone.spec.family == "efficientnet" else torch.contiguous_format
    backbone.to(dev, memory_format=layout).eval()
    for name, module in backbone.named_modules():  # BN stays frozen (eval); only LoRA dropout trains
        if "lora_dropout" in name:
            module.train()
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)

    with CoreShare() as cores:  # fewer threads while other processes use the cores
        anchor_views = Views(backbone, anchors, config, config.views * 8, rng, dev, "anchors", cores)
        positive_views = Views(backbone, positives, config, max(1, config.views // 2), rng, dev, "positives", cores)
        negative_views = Views(backbone, negatives, config, config.views, rng, dev, "negatives", cores)
        framed_views = FramedViews(backbone, *zip(*framed), dev) if framed else None
        image_hw = (backbone.spec.preprocess.train_size,) * 2

        def autocast():
            return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")

        def embed(trunk_features: torch.Tensor) -> torch.Tensor:
            with autocast():
                features = backbone.head(trunk_features, image_hw)[0]
            return F.normalize(features.float(), dim=1)

        if framed_views is not None:
            with torch.no_grad():
                grid_hw = tuple(backbone.head(framed_views.cache[:1], image_hw)[1].shape[1:3])

        def in_context(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            """k in-context positives pooled inside their boxes, and outside them (negatives)."""
            trunk_features, cells = framed_views.sample([rng.randrange(len(framed_views)) for _ in range(k)], grid_hw)
            with autocast():
                grid = backbone.head(trunk_features, image_hw)[1]
            return pool_inside_and_outside(grid.float(), cells.to(dev))

        if owners is not None:  # per object, the cached rows of its anchors and of its positives
            objects = sorted(set(owners[0]))
            anchor_rows = [anchor_views.rows_of([i for i, o in enumerate(owners[0]) if o == k]) for k in objects]
            positive_rows = [positive_views.rows_of([i for i, o in enumerate(owners[1]) if o == k]) for k in objects]
            if any(not rows for rows in positive_rows):
                raise EdgePersrepError("every object of a joint run needs positives")

        checkpoints = Checkpoints(out_dir, config)
        first_step, losses = checkpoints.restore(backbone, optimizer, rng)
        started = time.time()
        b = config.batch_size
        for step in tqdm(range(first_step, config.steps), desc="train", unit="step", initial=first_step,
                         total=config.steps):
            row_owners = None
            if owners is None:
                a = embed(anchor_views.sample([rng.randrange(len(anchor_views)) for _ in range(b)]))
            else:
                row_owners = [rng.randrange(len(objects)) for _ in range(b)]
                a = embed(anchor_views.sample([rng.choice(anchor_rows[k]) for k in row_owners]))
            k = in_context_rows(b, len(framed), counts["positives"])
            if row_owners is None:
                p = embed(positive_views.sample([rng.randrange(len(positive_views)) for _ in range(b - k)]))
            else:
                p = embed(positive_views.sample([rng.choice(positive_rows[o]) for o in row_owners]))
            n = embed(negative_views.sample([rng.randrange(len(negative_views)) for _ in range(b)]))
            if k:  # scored inside their boxes; what surrounds each box is one more negative
                inside, outside = in_context(k)
                p, n = torch.cat([p, inside]), torch.cat([n, outside])
            loss = info_nce(a, p, n, config.tau,
                            torch.tensor(row_owners, device=dev) if row_owners is not None else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(round(loss.item(), 5))
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                checkpoints.save(step + 1, losses, backbone, optimizer, rng)
            cores.check()
    backbone.eval()
    seconds = time.time() - started
    set_lora_scale(peft_model, config.lora_alpha * config.merge_scale)
    peft_model.save_pretrained(str(out_dir / "adapter"))
    checkpoints.clear()
    backbone.model = peft_model.merge_and_unload()
    backbone.to("cpu", memory_format=torch.contiguous_format).eval()
    atomic_write_json(out_dir / "loss.json", {"loss": losses})
    summary = {"steps": config.steps, "seconds": round(seconds, 1), "loss_first": losses[0], "loss_last": losses[-1],
               "loss_last10_mean": round(float(np.mean(losses[-10:])), 5), "anchors": len(anchors),
               **counts, "negatives": len(negatives), "config": asdict(config), "threads": cores.record(),
               **({"objects": len(set(owners[0]))} if owners is not None else {}),
               **({"continued_from": str(start_from)} if start_from is not None else {})}
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 itself (AVX512-BF16); elsewhere torch emulates it, slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported())


AUTO_PRECISION_ENV = "EDGE_PERSREP_TRAIN_PRECISION"  # fp32 | bf16: pins what "auto" means (the tests pin fp32)


def resolve_precision(precision: str, device: str, cache_trunk: bool = True) -> str:
    """A request's training precision as the run will record it: "auto" is bf16 on a CPU that
    computes it natively when the trunk is cached (the `quick` preset: benchmark quality measured
    equal at 160 steps; a step 0.95x the time in the full pipeline, 0.74x for the LoRA'd head
    alone), fp32 elsewhere: GPUs (not measured there yet) and uncached training (`paper`: 1.41 s a
    step in bf16 against 1.38 in fp32, the frozen trunk runs in fp32 either way), unless
    $EDGE_PERSREP_TRAIN_PRECISION pins it; "fp32" and "bf16" are checked and kept."""
    if precision == "auto":
        pinned = os.environ.get(AUTO_PRECISION_ENV, "")
        if not pinned:
            native = torch.device(device).type == "cpu" and native_bf16_cpu()
            return "bf16" if native and cache_trunk else "fp32"
        if pinned not in TRAIN_PRECISIONS:
            raise EdgePersrepError(f"{AUTO_PRECISION_ENV}={pinned}: use {' or '.join(TRAIN_PRECISIONS)}, or unset it")
        precision = pinned
    check_precision(precision, device)
    return precision


def check_precision(precision: str, device: str) -> None:
    """bf16 only where the hardware computes it (a CPU with AVX512-BF16, or a GPU): elsewhere torch
    emulates it, slower than fp32."""
    if precision not in TRAIN_PRECISIONS:
        raise EdgePersrepError(f"training precision '{precision}': use {' or '.join(TRAIN_PRECISIONS)}")
    if precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16_cpu():
        raise EdgePersrepError("--train-precision bf16: this CPU has no native bf16 (AVX512-BF16), where it would "
                               "be slower than fp32; use fp32 or auto")


def _continue_lora(backbone: Backbone, adapter_dir: Path):
    """A saved LoRA attached trainable (not merged): training goes on from it."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise EdgePersrepError(f"{adapter_dir}: no LoRA adapter here (adapter_config.json missing); train first")
    peft_model = PeftModel.from_pretrained(backbone.model, str(adapter_dir), is_trainable=True)
    backbone.model = peft_model.base_model.model  # as add_lora leaves it
    _fast_dropouts(backbone.model)
    return peft_model


def _fast_dropouts(model: nn.Module) -> None:
    """peft's LoRA dropouts replaced by FastDropout (same p)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for key, dropout in dropouts.items():
                if isinstance(dropout, nn.Dropout):
                    dropouts[key] = FastDropout(dropout.p)


def load_adapter(backbone: Backbone, adapter_dir: Path) -> None:
    """Attach a saved LoRA adapter (peft format, safetensors) and merge it into the backbone."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise EdgePersrepError(f"{adapter_dir}: no LoRA adapter here (adapter_config.json missing); train first")
    peft_model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
    backbone.model = peft_model.merge_and_unload()
    backbone.eval()
