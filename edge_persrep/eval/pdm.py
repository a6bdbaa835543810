"""PDM (Samuel et al., NeurIPS 2024, "Where's Waldo"): zero-shot personalized matching from diffusion
features, the evaluation baseline that needs no training (`edge-persrep eval --baseline pdm`).

For every image, as PDM does with a text-to-image UNet:
1. The photo (stretched to the model's resolution, as the runtime stretches to its input) is encoded
   by the VAE and inverted with DDIM under a generic prompt ("a photo of a {category}") for
   `inversion_steps` steps, to the timestep `inversion_steps x stride` (it keeps the photo's
   appearance in the noisy latent; the paper inverts with SDXL-turbo, here the given SD UNet).
2. One UNet pass at that point; hooks read, in the last transformer block of the last up-block
   that has attention (the finest cross-attention resolution), the self-attention queries and keys
   of every position (appearance features: [Q, K], each L2-normalised) and the cross-attention of
   the category's token(s) (semantic map: softmax over the prompt's tokens, averaged over heads).
Matching: the reference photos' object positions (from masks, or found as what the photos share,
as enrolment finds them) give a bank of features; a test image's appearance map is each
position's best cosine to the bank, the semantic map its category attention scaled to [0, 1], and
PDM's map their product. Image score (classification: PDM's personalized retrieval, ranking the
test images by the reference object) = the mean of the map's top 1% of positions (at least 4); box
and mask = the runtime's localisation of the map (Otsu, clean-up, component), confidence = the
image score. The same metrics as the backbones, on the same protocol.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..runtime import dense, metrics
from ..runtime.errors import EdgePersrepError
from ..runtime.finder import ImageFeatures, object_cells
from ..runtime.images import load_image
from .runner import dense_metrics, ground_truth, scored_splits, training_masks


@dataclass(frozen=True)
class PDMConfig:
    inversion_steps: int = 10  # DDIM inversion steps (the paper: one step of SDXL-turbo)
    stride: int = 20  # timesteps per inversion step: features at t = 200 of 1000
    top: float = 0.01  # share of positions whose mean is the image score
    min_top: int = 4


class DiffusionFeatures:
    """Per image: (appearance features [h, w, 2d] unit, semantic map [h, w]) from one SD UNet."""

    def __init__(self, sd, config: PDMConfig = PDMConfig(), device: str = "cpu"):
        import torch
        from diffusers import DDIMScheduler

        self.sd, self.config, self.device = sd, config, torch.device(device)
        self.scheduler = DDIMScheduler.from_config(sd.scheduler_config)
        blocks = [b for b in sd.unet.up_blocks if getattr(b, "attentions", None)]
        if not blocks:
            raise EdgePersrepError("PDM needs a UNet with cross-attention in its up-blocks")
        self.block = blocks[-1].attentions[-1].transformer_blocks[-1]
        self.captured: dict[str, object] = {}
        for name, module in (("q", self.block.attn1.to_q), ("k", self.block.attn1.to_k),
                             ("cq", self.block.attn2.to_q), ("ck", self.block.attn2.to_k)):
            module.register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.captured[name] = output.detach().float()
        return hook

    def _token_positions(self, prompt: str, category: str) -> list[int]:
        ids = self.sd.tokenize([prompt])[0].tolist()
        word = self.sd.tokenizer(category, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(word) + 1):
            if ids[start:start + len(word)] == word:
                return list(range(start, start + len(word)))
        raise EdgePersrepError(f"the prompt '{prompt}' does not contain '{category}' as tokens")

    def __call__(self, image: Image.Image, category: str) -> tuple[np.ndarray, np.ndarray]:
        import torch

        sd, config = self.sd, self.config
        prompt = f"a photo of a {category}"
        side = sd.resolution
        x = torch.from_numpy(np.asarray(image.convert("RGB").resize((side, side), Image.BICUBIC), np.float32))
        x = (x / 127.5 - 1.0).permute(2, 0, 1)[None].to(self.device, sd.vae.dtype)
        with torch.no_grad():
            latent = sd.vae.encode(x).latent_dist.mean * float(getattr(sd.vae.config, "scaling_factor", 0.18215))
            states = sd.encode_prompts([prompt]).to(self.device, sd.unet.dtype)
            alphas = self.scheduler.alphas_cumprod
            t = 0
            for _ in range(config.inversion_steps):  # DDIM inversion: x_t -> x_{t + stride}
                eps = sd.unet(latent.to(sd.unet.dtype), t, states).sample.float()
                a_t, a_next = alphas[t], alphas[t + config.stride]
                x0 = (latent - (1 - a_t).sqrt() * eps) / a_t.sqrt()
                latent = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
                t += config.stride
            self.captured.clear()
            sd.unet(latent.to(sd.unet.dtype), t, states)
        q, k = self.captured["q"][0], self.captured["k"][0]  # [hw, d]
        hw = q.shape[0]
        h = w = int(round(hw ** 0.5))
        appearance = torch.cat([torch.nn.functional.normalize(q, dim=-1),
                                torch.nn.functional.normalize(k, dim=-1)], dim=-1) / np.sqrt(2)
        heads = self.block.attn2.heads
        cq, ck = self.captured["cq"][0], self.captured["ck"][0]  # [hw, d], [77, d]
        d = cq.shape[-1] // heads
        attention = torch.softmax(torch.einsum("qhd,khd->hqk", cq.view(hw, heads, d), ck.view(-1, heads, d))
                                  / np.sqrt(d), dim=-1).mean(0)  # [hw, 77]
        semantic = attention[:, self._token_positions(prompt, category)].sum(-1)
        return appearance.view(h, w, -1).cpu().numpy(), semantic.view(h, w).cpu().numpy()


def pdm_map(appearance: np.ndarray, semantic: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """PDM's map of one image: best cosine of each position to the reference bank [P, C], times the
    category's attention scaled to [0, 1]."""
    h, w, c = appearance.shape
    match = (appearance.reshape(-1, c) @ bank.T).max(axis=1).reshape(h, w)
    lo, hi = float(semantic.min()), float(semantic.max())
    return match * ((semantic - lo) / (hi - lo) if hi - lo > 1e-12 else np.ones_like(semantic))


def image_score(similarity: np.ndarray, config: PDMConfig) -> float:
    flat = np.sort(similarity.ravel())[::-1]
    return float(flat[:max(config.min_top, int(round(config.top * flat.size)))].mean())


def evaluate_pdm(evalset, objects, sd_model: str, out: Path, config: PDMConfig = PDMConfig(),
                 device: str = "cpu") -> dict:
    """{object: {split: metrics}} for PDM, on the same images, gallery and protocol as score_bundle."""
    from ..server_side.synth.sd_models import is_random_model, load_sd, resolve_sd_model

    folder = resolve_sd_model(sd_model)
    sd = load_sd(folder, device)
    extract = DiffusionFeatures(sd, config, device)
    cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}

    def features(path: Path, category: str):
        """(appearance, semantic map, the photo's size), computed once per photo and category."""
        key = (str(path), category)
        if key not in cache:
            image = load_image(path)
            cache[key] = (*extract(image, category), image.size)
        return cache[key]

    results = {}
    for obj in tqdm(objects, desc="pdm", unit="object"):
        refs = [features(p, obj.category) for p in obj.train]
        grids = [ImageFeatures(a.mean(axis=(0, 1)), a, *size) for a, _, size in refs]
        cells = object_cells(grids, training_masks(obj))  # the object's positions, as enrolment finds them
        bank = np.concatenate([a[m] for (a, _, _), m in zip(refs, cells)])
        results[obj.name] = _score(obj, evalset, bank, features, config)
    summary = {"sd_model": str(sd_model), "sd_folder": str(folder), "random_weights": is_random_model(folder),
               "config": asdict(config)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pdm.json").write_text(json.dumps({**summary, "results": results}, indent=2))
    return {"results": results, **summary}


def _score(obj, evalset, bank: np.ndarray, features, config: PDMConfig) -> dict:
    """The backbones' metrics (eval/runner.py) with PDM's map and score. Retrieval in PDM's sense
    (rank images by the reference object) is the classification AP here; the runner's other
    direction (a test photo as the query against the training photos) would need the query's object
    mask, which PDM takes as given and this protocol does not have, so it is not reported."""
    results = {}
    for split, idx, labels in scored_splits(evalset, obj):
        found = {i: features(evalset.tests[i].path, obj.category) for i in idx}
        maps = {i: pdm_map(found[i][0], found[i][1], bank) for i in idx}
        scores = {i: image_score(maps[i], config) for i in idx}
        r = {"classification_ap": metrics.average_precision([scores[i] for i in idx], labels),
             "classification_f1": metrics.best_f1([scores[i] for i in idx], labels)}
        boxes_gt, masks_gt = ground_truth(evalset, obj, idx)
        if boxes_gt:
            box_dets, mask_dets = [], []
            for i in idx:
                width, height = found[i][2]
                mask, box = dense.localize(maps[i], width, height, with_mask=bool(masks_gt))
                box_dets.append((i, scores[i], box))
                if masks_gt:
                    mask_dets.append((i, scores[i], mask if box is not None else None))
            r.update(dense_metrics(box_dets, mask_dets, boxes_gt, masks_gt))
        results[split] = r
    return results
