"""`personalize`: photos -> synthetic data -> contrastive LoRA -> merged ONNX bundle -> enrolled object.

Four stages after the checks, each reusing what a previous run with the same settings finished
(the run directory: run_dir.RunDir):
    1. prepare     copy the photos, masks and negatives into the run; split off calibration negatives
    2. synthesise  positives (and, for the Stable Diffusion methods, negatives) from the photos
    3. train       a LoRA on the backbone with InfoNCE: photos vs positives vs negatives
    4. export      merge, export to ONNX and enroll the object, calibrated on the chosen negatives
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..export.bundle_writer import versions
from ..runtime.files import sha256_file
from ..runtime.finder import Finder, stored_photos
from ..runtime.images import list_images, load_image
from ..runtime.threads import settings as thread_settings
from ..server_side import synth
from ..server_side.backbones import Backbone
from ..server_side.contrastive import load_adapter, train
from ..server_side.negatives import identity_of, no_holdout, split_for_calibration
from ..server_side.object_masks import find_object_masks
from .bundles import export_bundle
from .request import PersonalizeRequest, Plan
from .run_dir import RunDir, copy_name, split_negatives


def personalize(request: PersonalizeRequest) -> Path:
    """The whole server-side job; returns the bundle directory (RUN/bundle)."""
    plan = request.plan()  # every check that can fail, before any long work
    run = RunDir(request.out)
    timings: dict[str, float] = {}
    with _timed(timings, "prepare_s"):
        prepared = prepare(plan, run, timings)
    with _timed(timings, "synth_s"):
        data = synthesise(plan, run, prepared)
    with _timed(timings, "train_s"):
        summary = train_lora(plan, run, prepared, data)
    with _timed(timings, "export_enroll_s"):
        if not run.finished_bundle(request.name, summary):
            export_bundle(prepared.model, run.bundle, prepared.reference, summary, request.name, request.category,
                          data.enrolment_negatives, force=True, masks=prepared.masks)
    run.write(prepared.record)
    return run.bundle


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    """Add the stage's time to what earlier invocations of this run spent on it (run.json keeps
    the run's cost: a rerun that reuses a finished stage adds about nothing, and does not erase it)."""
    started = time.time()
    yield
    timings[key] = round(timings.get(key, 0.0) + time.time() - started, 1)


@dataclass
class Prepared:
    """Stage 1's result: the run's own copies of the inputs, the pretrained backbone and the record."""

    record: dict  # run.json
    model: Backbone
    reference: list[Path]
    masks: list[Path] | None
    negatives: list[Path]  # the user's negatives trained against
    calibration: list[Path]  # the user's negatives held out of training to calibrate `present`


@dataclass
class TrainingData:
    """Stage 2's result."""

    positives: list[Path]
    positive_boxes: list[tuple[int, int, int, int] | None]  # in-context positives: the object's box
    negatives: list[Path]  # trained against
    enrolment_negatives: list[Path]  # `present` is calibrated on these


# --- 1. prepare ----------------------------------------------------------------------------------

def prepare(plan: Plan, run: RunDir, timings: dict) -> Prepared:
    request = plan.request
    identities, images = gather_negatives([Path(d) for d in request.negatives], request.others)
    record = _record(plan, images, timings)
    timings.update(run.resume(record, request.force))  # before anything in the run is reused or overwritten
    reference = run.copy_photos(plan.photos)
    masks = run.copy_masks(plan.mask_arrays, reference) if plan.mask_arrays else None
    model = plan.source.build()
    split = (split_for_calibration(identities, _hardness(model, reference, images, plan.device))
             if request.calibrate_on == "held-out" else no_holdout(len(images)))
    record["calibration"] = split.record(identities)
    negatives = run.save_negatives(images, split.train, run.negatives)
    calibration = run.save_negatives(images, split.calibration, run.calibration)
    run.write(record)
    return Prepared(record, model, reference, masks, negatives, calibration)


def _record(plan: Plan, negatives: Sequence[Image.Image], timings: dict) -> dict:
    """run.json: what was asked, resolved (RESUME_KEYS must match for a rerun to resume)."""
    r = plan.request
    return {"name": r.name, "category": r.category, "backbone": r.backbone,
            "weights_file": plan.source.weights_file, "weights_sha256": plan.source.weights_sha256,
            "synth": r.synth_method, "calibrate_on": r.calibrate_on, "preset": r.preset, "seed": r.seed,
            "device": plan.device, "photos": [copy_name(i, p) for i, p in enumerate(plan.photos)],
            "photo_sha256": [sha256_file(p) for p in plan.photos],
            "negatives": {"count": len(negatives), "sha256": _content_sha256(negatives)},
            "train_config": asdict(plan.train_config), "versions": versions(), "threads": thread_settings(),
            "timings": timings,
            "diffusion": _diffusion_record(plan.diffusion) if plan.diffusion is not None else None,
            "synth_data": str(r.synth_data) if r.synth_data is not None else None}


def gather_negatives(negative_dirs: Sequence[Path], other_bundle: Path | None) -> tuple[list[str], list[Image.Image]]:
    """Negatives and their identities (negatives.identity_of): the photos in --negatives folders
    and the objects enrolled in another bundle (each object one identity)."""
    paths = [p for d in negative_dirs for p in list_images([d])]
    identities, images = [identity_of(p.name) for p in paths], [load_image(p) for p in paths]
    if other_bundle is not None:
        for prototype in Finder.open(other_bundle).store.objects.values():
            photos = stored_photos(prototype)
            identities += [f"enrolled:{prototype.name}"] * len(photos)
            images += photos
    return identities, images


def _content_sha256(images: Sequence[Image.Image]) -> str:
    """One digest of the images' pixels, in order: a rerun resumes only on the same negatives."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def _diffusion_record(options) -> dict:
    """The generation settings a resumed run must share (the device may change between runs)."""
    record = json.loads(json.dumps(asdict(options), default=str))
    record.pop("device")
    return record


def _hardness(model, reference: Sequence[Path], negatives: Sequence[Image.Image], device: str) -> list[float]:
    """Each negative's highest cosine to the reference photos under `model` (the pretrained one)."""
    import numpy as np

    from ..server_side.embedder import Embedder

    embed = Embedder(model, device)
    refs = np.stack([f.embedding for f in embed([load_image(p) for p in reference])])
    return [float((refs @ f.embedding).max()) for f in embed(negatives)]


# --- 2. synthesise -------------------------------------------------------------------------------

def synthesise(plan: Plan, run: RunDir, prepared: Prepared) -> TrainingData:
    request = plan.request
    result = plan.synth_data
    if result is None:
        backgrounds = list_images([request.backgrounds]) if request.backgrounds else prepared.negatives
        masks = prepared.masks
        if masks is None and request.synth_method in synth.METHODS_FINDING_MASKS:
            masks = _found_masks(plan, run, prepared)
        result = synth.generate(request.synth_method, synth.SynthRequest(
            photos=prepared.reference, category=request.category, out_dir=run.synth,
            count=plan.train_config.positives, seed=request.seed, masks=masks, diffusion=plan.diffusion,
            backgrounds=backgrounds))
    negatives, enrolment = split_negatives(prepared.negatives, prepared.calibration, result.negatives,
                                           request.calibrate_on)
    prepared.record["calibration"].update(enrolment_negatives=len(enrolment),
                                          on_training_negatives=enrolment == negatives)
    return TrainingData(result.positives, synth.in_context_boxes(result), negatives, enrolment)


def _found_masks(plan: Plan, run: RunDir, prepared: Prepared) -> list[Path]:
    """The object masks foreground discovery finds with the pretrained backbone against the
    training negatives; saved in the run (found_masks/), and reused by a rerun."""
    saved = [run.found_masks / f"{p.stem}.png" for p in prepared.reference]
    if all(p.is_file() for p in saved):
        return saved
    masks = find_object_masks(prepared.model, prepared.reference, prepared.negatives, plan.device)
    return run.copy_masks(masks, prepared.reference, run.found_masks)


# --- 3. train ------------------------------------------------------------------------------------

def train_lora(plan: Plan, run: RunDir, prepared: Prepared, data: TrainingData) -> dict:
    """Train (or, when finished, load) the LoRA into `prepared.model`; returns the training summary."""
    if run.trained():
        load_adapter(prepared.model, run.train / "adapter")
        return run.training_summary()
    anchors = [load_image(p) for p in prepared.reference]
    return train(prepared.model, anchors, data.positives, data.negatives, plan.train_config, run.train,
                 device=plan.device, positive_boxes=data.positive_boxes)
