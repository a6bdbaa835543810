"""Personalized generation: 3 photos -> DreamBooth -> hundreds of new photos of the object, and negatives.

The method top to bottom (`generate`), every stage resumable and recorded in `synth.json`:
0. Check everything that can be wrong before any long work: photos, masks, the SD folder, options.
1. Un-tuned Stable Diffusion, prompt "a photo of a {category}": the negatives (paper: 1,000). The
   first `class_images` of them (paper: 200) double as DreamBooth's prior-preservation class images:
   same model, same prompt, so generating them twice would only cost time.
   For `combined`, also scene backgrounds without the object for Cut-and-Paste.
2. DreamBooth (LoRA by default, or full), masked when masks are given (`masked-dreambooth`).
   `ip-adapter` trains nothing: an IP-Adapter conditions the un-tuned model on the photos (ip_adapter.py).
   `--refine patchdpo` then continues the LoRA with a patch-quality-weighted loss (patchdpo.py).
3. Tuned model, context prompts ("a photo of sks dog on a beach"): the positives (paper: 450).
   `ip-adapter`: the class noun in the prompts ("a photo of dog on a beach"), each batch conditioned
   on one reference photo in turn.
4. Filter: keep positives whose object crop embeds close to the real photos.
5. `combined` (the paper's best): add Cut-and-Paste positives on the generated backgrounds.

Under `torchrun` or `accelerate launch --multi_gpu` every process (one per GPU) generates its own
share of each image set; process 0 alone fine-tunes (the others wait, then load its weights),
filters and writes the summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ...runtime.errors import EdgePersrepError
from ...runtime.files import atomic_write_json
from ...runtime.images import load_image
from ..embedder import Embedder
from ..options import DEFAULT_BACKBONE
from . import cutpaste
from .base import DIFFUSION_METHODS, METHODS_NEEDING_MASKS, SynthRequest, SynthResult, read_masks
from .dreambooth import DreamBoothConfig, check_precision, class_prompt, fine_tune, load_tuned, weight_dtype
from .filtering import default_threshold, filter_generated
from .ip_adapter import IPAdapterConfig
from .ip_adapter import load_into as load_ip_adapter
from .patchdpo import REFINE_METHODS, PatchDPOConfig, refine
from .prompts import background_prompts, bank, read_prompt_file
from .sampling import Sampler, SamplingConfig, join_process_group, process_shard, sample_set, wait_for_everyone
from .sd_models import DEFAULT_SD_MODEL, load_sd, resolve_sd_model


@dataclass
class DiffusionOptions:
    sd_model: str = DEFAULT_SD_MODEL
    dreambooth: DreamBoothConfig = field(default_factory=DreamBoothConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    negatives: int = 1000  # paper: ~1,000 negatives from the un-tuned model
    backgrounds: int = 100  # combined: generated scenes Cut-and-Paste pastes onto
    prompts_file: Path | None = None  # replaces the built-in prompt bank
    min_similarity: float | None = None  # filter threshold; None: the mode's default (filtering.default_threshold)
    filter_mode: str = "global"  # filtering.FILTER_MODES: the paper's crop score or the patch score
    device: str = "cpu"
    filter_backbone: str = DEFAULT_BACKBONE
    filter_weights: Path | None = None
    ip_adapter: IPAdapterConfig = field(default_factory=IPAdapterConfig)  # --synth ip-adapter
    refine: str = "none"  # REFINE_METHODS: "patchdpo" refines the DreamBooth LoRA (patchdpo.py)
    patchdpo: PatchDPOConfig = field(default_factory=PatchDPOConfig)


def check_request(request: SynthRequest, method: str) -> tuple[Path, list[Image.Image], list[np.ndarray] | None]:
    """Every input check that can fail, done before anything is loaded; returns the SD folder and
    the photos and masks it read."""
    options = request.diffusion or DiffusionOptions()
    if method not in DIFFUSION_METHODS:
        raise EdgePersrepError(f"unknown diffusion method '{method}'; choose one of: {', '.join(DIFFUSION_METHODS)}")
    if len(request.photos) < 1:
        raise EdgePersrepError("DreamBooth needs at least 1 photo of the object (3 recommended)")
    photos = [load_image(p) for p in request.photos]
    if method in METHODS_NEEDING_MASKS and not request.masks:
        raise EdgePersrepError(f"--synth {method} needs --masks DIR (one PNG per photo, white = object)")
    masks = read_masks(request.photos, request.masks) if request.masks else None
    check_precision(options.dreambooth.precision, options.device)
    if options.prompts_file is not None:
        read_prompt_file(options.prompts_file, options.dreambooth.subject(request.category))
    if request.count < 1 or options.negatives < 1:
        raise EdgePersrepError("ask for at least 1 positive and 1 negative")
    if options.refine not in REFINE_METHODS:
        raise EdgePersrepError(f"--refine {options.refine}: use {' or '.join(REFINE_METHODS)}")
    if options.refine != "none" and (method == "ip-adapter" or options.dreambooth.mode != "lora"):
        raise EdgePersrepError(f"--refine {options.refine} refines a LoRA DreamBooth: use it with --synth dreambooth, "
                               "masked-dreambooth or combined and --dreambooth lora")
    return resolve_sd_model(options.sd_model), photos, masks


def generate(request: SynthRequest, method: str) -> SynthResult:
    options = request.diffusion or DiffusionOptions()
    folder, photos, masks = check_request(request, method)  # 0
    db, device, out = options.dreambooth, options.device, request.out_dir
    out.mkdir(parents=True, exist_ok=True)
    join_process_group(device)
    rank, _ = process_shard()
    timings: dict[str, float] = {}
    sd = load_sd(folder, device, weight_dtype(db.precision, device))
    settings = {"sd_model": str(options.sd_model), "method": method}
    untuned = Sampler(sd, options.sampling)

    started = time.time()  # 1: negatives (and class images), backgrounds
    wanted = options.negatives if method == "ip-adapter" else max(options.negatives, db.class_images)  # + class images
    negatives = sample_set(untuned, replace(request, count=wanted), "negatives",
                           lambda i: class_prompt(request.category), {**settings, "model": "untuned"}).positives
    backgrounds = []
    if method == "combined":
        scenes = background_prompts(request.category)
        backgrounds = sample_set(untuned, replace(request, count=options.backgrounds), "backgrounds",
                                 lambda i: scenes[i % len(scenes)], {**settings, "model": "untuned"}).positives
    timings["untuned_sampling_s"] = round(time.time() - started, 1)

    started = time.time()  # 2: DreamBooth (none for ip-adapter)
    if method == "ip-adapter":
        generated, db_summary = ip_adapter_positives(sd, photos, request, options, settings)
        timings["ip_adapter_sampling_s"] = round(time.time() - started, 1)
    else:
        tuned_dir = out / "dreambooth"
        training_masks = masks if method in ("masked-dreambooth", "combined") else None
        if rank == 0:
            class_images = [load_image(p) for p in negatives[: db.class_images]] if db.prior_weight > 0 else []
            db_summary = fine_tune(sd, photos, class_images, request.category, db, tuned_dir, device, training_masks)
        wait_for_everyone()
        if rank != 0:
            load_tuned(sd, tuned_dir, db)
            db_summary = json.loads((tuned_dir / "dreambooth.json").read_text())
        timings["dreambooth_s"] = round(time.time() - started, 1)
        subject = db.subject(request.category)
        prompts = read_prompt_file(options.prompts_file, subject) if options.prompts_file else bank(subject,
                                                                                                    request.category)
        if options.refine == "patchdpo":
            started = time.time()
            refined_dir = out / "patchdpo"
            if rank == 0:
                def sample(folder: Path, count: int):
                    made = sample_set(Sampler(sd, options.sampling), replace(request, out_dir=folder, count=count),
                                      "samples", lambda i: prompts[i % len(prompts)],
                                      {**settings, "model": "dreambooth", "token": db.token}).positives
                    return made, [prompts[i % len(prompts)] for i in range(count)]

                db_summary = {**db_summary, "patchdpo": refine(
                    sd, photos, masks, request.category, db, options.patchdpo, tuned_dir, refined_dir, device, sample,
                    filter_embedder(options))}
            wait_for_everyone()
            if rank != 0:
                sd.unet.delete_adapters("default")
                load_tuned(sd, refined_dir, db)
            timings["patchdpo_s"] = round(time.time() - started, 1)

        started = time.time()  # 3: positives from the (refined) tuned model
        generated = sample_set(Sampler(sd, options.sampling), request, "positives", lambda i: prompts[i % len(prompts)],
                               {**settings, "model": "dreambooth", "token": db.token}).positives
        timings["tuned_sampling_s"] = round(time.time() - started, 1)
    if rank != 0:  # process 0 finishes alone
        return SynthResult(generated, out / "positives.json", negatives[: options.negatives])

    started = time.time()  # 4: filter
    threshold = (default_threshold(request.category, options.filter_mode) if options.min_similarity is None
                 else options.min_similarity)
    report = filter_generated(filter_embedder(options), photos, masks, generated, threshold, out / "filter.json",
                              options.filter_mode)
    if not report.kept:
        best = max(report.chosen.values())
        raise EdgePersrepError(f"{out}: all {len(generated)} generated positives were filtered out (best "
                               f"{options.filter_mode} score {best:.3f} < threshold {threshold}); check the DreamBooth "
                               f"result in {out / 'positives'} or lower --min-similarity")
    timings["filter_s"] = round(time.time() - started, 1)

    positives = list(report.kept)
    if method == "combined":  # 5: Cut-and-Paste on the generated backgrounds
        started = time.time()
        pasted = cutpaste.generate(replace(request, out_dir=out / "cutpaste", backgrounds=backgrounds))
        positives += pasted.positives
        timings["cutpaste_s"] = round(time.time() - started, 1)

    summary = {"method": method, "category": request.category, "sd_model": str(options.sd_model),
               "sd_folder": str(folder), "device": device,
               ("ip_adapter" if method == "ip-adapter" else "dreambooth"): db_summary,
               "sampling": options.sampling.record(), "prompts": str(options.prompts_file or "built-in bank"),
               "generated_positives": len(generated), "filter": {"threshold": threshold, "kept": len(report.kept),
                                                                 "dropped": report.dropped,
                                                                 "embedder": options.filter_backbone},
               "negatives": options.negatives, "class_images": db.class_images, "backgrounds": len(backgrounds),
               "timings": timings,
               "training_positives": [str(p.relative_to(out)) for p in positives],
               "training_negatives": [str(p.relative_to(out)) for p in negatives[: options.negatives]]}
    atomic_write_json(out / "synth.json", summary)
    print(f"synth {method}: {len(generated)} generated, {report.dropped} dropped by the filter "
          f"(threshold {threshold}), {len(positives)} positives, {options.negatives} negatives")
    return SynthResult(positives, out / "synth.json", negatives[: options.negatives])


def filter_embedder(options: DiffusionOptions) -> Embedder:
    """The pretrained backbone the filter (and PatchDPO's patch quality) measures generated images with."""
    from ..backbones import create_backbone

    return Embedder(create_backbone(options.filter_backbone, pretrained=True, weights=options.filter_weights),
                    options.device)


def ip_adapter_positives(sd, photos: list[Image.Image], request: SynthRequest, options: DiffusionOptions,
                         settings: dict) -> tuple[list[Path], dict]:
    """Positives without fine-tuning: the un-tuned model with an IP-Adapter, the class noun in the
    prompt bank, each batch conditioned on one reference photo (in turn)."""
    sampler = Sampler(sd, options.sampling)
    load_ip_adapter(sampler.pipe, options.ip_adapter)
    subject = request.category
    prompts = read_prompt_file(options.prompts_file, subject) if options.prompts_file else bank(subject,
                                                                                                request.category)
    batch = options.sampling.batch_size
    started = time.time()
    generated = sample_set(sampler, request, "positives", lambda i: prompts[i % len(prompts)],
                           {**settings, "model": "ip-adapter", **options.ip_adapter.record()},
                           reference_for=lambda i: (i // batch) % len(photos), references=photos).positives
    seconds = time.time() - started
    return generated, {**options.ip_adapter.record(), "references": len(photos), "images": len(generated),
                       "seconds": round(seconds, 1), "images_per_s": round(len(generated) / max(seconds, 1e-9), 3)}


def read_synth_data(folder: Path, category: str) -> SynthResult:
    """A finished `edge-persrep synth` output, for `personalize --synth-data`."""
    path = folder / "synth.json"
    if not path.is_file():
        raise EdgePersrepError(f"{folder}: no synth.json; make it with `edge-persrep synth` (and let it finish)")
    try:
        summary = json.loads(path.read_text())
        positives = [folder / p for p in summary["training_positives"]]
        negatives = [folder / p for p in summary["training_negatives"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise EdgePersrepError(f"{path}: not a synth summary ({exc}); rerun `edge-persrep synth`") from exc
    if summary.get("category") != category:
        raise EdgePersrepError(f"{folder}: made for category '{summary.get('category')}', not '{category}'")
    missing = [p for p in positives + negatives if not p.is_file()]
    if missing:
        raise EdgePersrepError(f"{folder}: {len(missing)} listed images are missing (first: {missing[0]}); "
                               "rerun `edge-persrep synth` with the same options to restore them")
    return SynthResult(positives, path, negatives)
