"""`personalize`: photos -> synthetic data -> contrastive LoRA -> merged ONNX bundle -> enrolled object.

A run directory records how it was made and lets a rerun resume:
    run.json        what was asked (name, category, backbone, synth, preset, seed) + versions + timings
    photos/         the reference photos (copies, downscaled); negatives/ the training negatives and
                    calibration/ the ones held out of training to calibrate `present` (server_side.negatives)
    synth/          the generator's positives and manifest (resumes image by image)
    train/          adapter/ (peft LoRA, safetensors), loss.json, summary.json (skipped if present)
    bundle/         the exported bundle with NAME enrolled
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from PIL import Image

from .export.bundle_writer import prepare_output_dir, versions, write_bundle
from .runtime.errors import EdgePersrepError
from .runtime.files import atomic_write_json, sha256_file
from .runtime.finder import Finder, stored_photos
from .runtime.images import list_images, load_image, refuse_duplicates
from .server_side import synth
from .server_side.backbones import BackboneSource, create_backbone, get_spec
from .server_side.contrastive import get_preset, load_adapter, train
from .server_side.negatives import generated_holdout, identity_of, no_holdout, split_for_calibration
from .server_side.options import CALIBRATE_ON, DEFAULT_BACKBONE

COPY_SIDE = 768  # photos copied into the run directory are downscaled to this long side


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgePersrepError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise EdgePersrepError(f"--device {device}: use auto, cpu or cuda")
    return device


def _copy_name(index: int, path: Path) -> str:
    return f"{index:03d}_{path.stem}.jpg"


def _save_copy(image: Image.Image, target: Path) -> None:
    """The run's copy of an input photo: upright RGB JPEG, downscaled to COPY_SIDE."""
    image = image.copy()
    image.thumbnail((COPY_SIDE, COPY_SIDE), Image.BICUBIC)
    image.save(target, format="JPEG", quality=92)


def _copy_photos(paths: Sequence[Path], out: Path) -> list[Path]:
    """Copy photos into the run: the run owns its inputs."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for i, path in enumerate(paths):
        target = out / _copy_name(i, path)
        if not target.exists():
            _save_copy(load_image(path), target)
        copies.append(target)
    return copies


RESUME_KEYS = ("name", "backbone", "weights_sha256", "synth", "calibrate_on", "preset", "seed", "photo_sha256",
               "negatives", "train_config", "diffusion", "synth_data")
DIFFUSION_POSITIVES = 450  # paper: ~450 generated positives per object, whatever the training preset
ENROLL_GENERATED_NEGATIVES = 32  # at most this many generated negatives are held out of training to calibrate


def _same_json(a, b) -> bool:
    """Equal as they read back from JSON (tuples are lists there, dict order does not count)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _refuse_other_settings(out: Path, record: dict, force: bool) -> None:
    """A rerun resumes only a run made with the same settings; `--force` starts it over instead."""
    run_json = out / "run.json"
    if not run_json.is_file():
        return
    old = json.loads(run_json.read_text())
    changed = [k for k in RESUME_KEYS if not _same_json(old.get(k), record[k])]
    if not changed:
        return
    if not force:
        raise EdgePersrepError(f"{out}: this run was made with other settings ({', '.join(changed)}); resuming it "
                               "would mix them. Use a new --out, or --force to start this run over")
    for stage in ("photos", "masks", "negatives", "calibration", "synth", "train", "bundle"):
        shutil.rmtree(out / stage, ignore_errors=True)


def _copy_masks(masks: Sequence, reference: Sequence[Path], out: Path) -> list[Path]:
    """Masks resized (nearest) to the run's photo copies, saved as PNG beside them."""
    out.mkdir(parents=True, exist_ok=True)
    copies = []
    for mask, photo in zip(masks, reference):
        target = out / f"{photo.stem}.png"
        size = Image.open(photo).size
        Image.fromarray(mask.astype("uint8") * 255).resize(size, Image.NEAREST).save(target)
        copies.append(target)
    return copies


def _diffusion_record(options) -> dict:
    """The generation settings a resumed run must share (the device may change between runs)."""
    record = json.loads(json.dumps(asdict(options), default=str))
    record.pop("device")
    return record


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


def _hardness(model, reference: Sequence[Path], negatives: Sequence[Image.Image], device: str) -> list[float]:
    """Each negative's highest cosine to the reference photos under `model` (the pretrained one)."""
    import numpy as np

    from .server_side.embedder import Embedder

    embed = Embedder(model, device)
    refs = np.stack([f.embedding for f in embed([load_image(p) for p in reference])])
    return [float((refs @ f.embedding).max()) for f in embed(negatives)]


def _save_negatives(images: Sequence[Image.Image], indices: Sequence[int], folder: Path) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in indices:
        target = folder / f"{i:04d}.jpg"
        if not target.exists():
            _save_copy(images[i], target)
        paths.append(target)
    return paths


def personalize(photos: Sequence[str | Path], name: str, category: str, out: Path, backbone: str = DEFAULT_BACKBONE,
                synth_method: str = "augment", negatives: Sequence[Path] = (), masks: Path | None = None,
                backgrounds: Path | None = None, others: Path | None = None, preset: str = "quick",
                device: str = "auto", seed: int = 0, weights: Path | None = None, steps: int | None = None,
                force: bool = False, diffusion=None, positives: int | None = None,
                synth_data: Path | None = None, calibrate_on: str = CALIBRATE_ON[0]) -> Path:
    """The whole server-side job; returns the bundle directory (RUN/bundle).

    `diffusion` (synth.personalized_generation.DiffusionOptions) configures the DreamBooth methods;
    `synth_data` uses a finished `edge-persrep synth` output instead of generating; `calibrate_on`
    says which negatives calibrate `present` (server_side.negatives)."""
    get_spec(backbone)  # an unknown backbone fails before any work starts
    if calibrate_on not in CALIBRATE_ON:
        raise EdgePersrepError(f"--calibrate-on {calibrate_on}: use {' or '.join(CALIBRATE_ON)}")
    device = resolve_device(device)
    config = get_preset(preset, seed=seed)
    if steps is not None:
        config = get_preset(preset, seed=seed, triplets=steps * config.batch_size, epochs=1)
    uses_diffusion = synth_method in synth.DIFFUSION_METHODS and synth_data is None
    if positives is None and uses_diffusion:
        positives = DIFFUSION_POSITIVES
    if positives is not None:
        config = replace(config, positives=positives)
    if uses_diffusion:
        from .server_side.synth.personalized_generation import DiffusionOptions

        diffusion = replace(diffusion or DiffusionOptions(), device=device, filter_backbone=backbone,
                            filter_weights=weights)
    photo_paths = list_images(photos)
    for p in photo_paths:
        load_image(p)  # every bad photo is refused before any long work starts
    refuse_duplicates(photo_paths)
    original_masks = synth.match_masks(photo_paths, Path(masks)) if masks else None
    mask_arrays = synth.read_masks(photo_paths, original_masks) if original_masks else None  # refuse bad masks now
    if synth_method in synth.METHODS_NEEDING_MASKS and not original_masks:
        raise EdgePersrepError(f"--synth {synth_method} needs --masks DIR (one PNG per photo, white = object)")
    if uses_diffusion:  # masks, SD folder, options: all checked before any long work
        from .server_side.synth.personalized_generation import check_request

        check_request(synth.SynthRequest(photo_paths, category, out / "synth", count=config.positives,
                                         masks=original_masks, diffusion=diffusion), synth_method)
    given_data = None
    if synth_data is not None:  # checked now, used at the synthesis stage
        from .server_side.synth.personalized_generation import read_synth_data

        given_data = read_synth_data(Path(synth_data), category)
    if not negatives and others is None and synth_method not in synth.DIFFUSION_METHODS:
        raise EdgePersrepError("no negatives: pass --negatives DIR (photos of other objects of the same "
                               "category) or --others BUNDLE (objects already enrolled)")
    run_json = out / "run.json"
    if out.exists() and any(out.iterdir()) and not run_json.is_file() and not force:
        raise EdgePersrepError(f"{out}: exists, is not empty and is not a run directory; choose another --out "
                               "or pass --force")
    out.mkdir(parents=True, exist_ok=True)

    timings: dict[str, float] = {}
    started = time.time()
    identities, negative_images = gather_negatives([Path(d) for d in negatives], others)
    source = BackboneSource.given(backbone, weights)
    record = {"name": name, "category": category, "backbone": backbone, "weights_file": source.weights_file,
              "weights_sha256": source.weights_sha256, "synth": synth_method, "calibrate_on": calibrate_on,
              "preset": preset,
              "seed": seed, "device": device, "photos": [_copy_name(i, p) for i, p in enumerate(photo_paths)],
              "photo_sha256": [sha256_file(p) for p in photo_paths],
              "negatives": {"count": len(negative_images), "sha256": _content_sha256(negative_images)},
              "train_config": asdict(config), "versions": versions(), "timings": timings,
              "diffusion": _diffusion_record(diffusion) if uses_diffusion else None,
              "synth_data": str(synth_data) if synth_data is not None else None}
    _refuse_other_settings(out, record, force)  # before anything in the run is reused or overwritten
    reference = _copy_photos(photo_paths, out / "photos")
    mask_paths = _copy_masks(mask_arrays, reference, out / "masks") if mask_arrays else None
    model = source.build()
    split = (split_for_calibration(identities, _hardness(model, reference, negative_images, device))
             if calibrate_on == "held-out" else no_holdout(len(negative_images)))
    record["calibration"] = split.record(identities)
    negative_paths = _save_negatives(negative_images, split.train, out / "negatives")
    calibration_paths = _save_negatives(negative_images, split.calibration, out / "calibration")
    atomic_write_json(run_json, record)
    timings["prepare_s"] = round(time.time() - started, 1)

    started = time.time()
    if given_data is not None:
        result = given_data
    else:
        request = synth.SynthRequest(photos=reference, category=category, out_dir=out / "synth",
                                     count=config.positives, seed=seed, masks=mask_paths, diffusion=diffusion,
                                     backgrounds=list_images([backgrounds]) if backgrounds else negative_paths)
        result = synth.generate(synth_method, request)
    positives = result.positives
    train_negatives, enroll_negatives = _training_and_calibration(negative_paths, calibration_paths, result.negatives,
                                                                  calibrate_on)
    record["calibration"].update(enrolment_negatives=len(enroll_negatives),
                                 on_training_negatives=enroll_negatives == train_negatives)
    timings["synth_s"] = round(time.time() - started, 1)

    started = time.time()
    train_dir = out / "train"
    if (train_dir / "summary.json").is_file() and (train_dir / "adapter" / "adapter_config.json").is_file():
        summary = json.loads((train_dir / "summary.json").read_text())
        load_adapter(model, train_dir / "adapter")
    else:
        anchors = [load_image(p) for p in reference]
        summary = train(model, anchors, positives, train_negatives, config, train_dir, device=device)
    timings["train_s"] = round(time.time() - started, 1)

    started = time.time()
    bundle_dir = out / "bundle"
    if not _finished_bundle(bundle_dir, name, summary):
        export_bundle(model, bundle_dir, reference, summary, name, category, enroll_negatives, force=True,
                      masks=mask_paths)
    timings["export_enroll_s"] = round(time.time() - started, 1)
    atomic_write_json(run_json, record)
    return bundle_dir


def _finished_bundle(bundle_dir: Path, name: str, training: dict) -> bool:
    """A resumed run's bundle is finished if it loads (manifest, checksums), holds this training's
    model and has `name` enrolled."""
    if not (bundle_dir / "bundle.json").is_file():
        return False
    try:
        finder = Finder.open(bundle_dir)
    except EdgePersrepError:
        return False  # half-written or damaged: export again
    return _same_json(finder.bundle.manifest.get("training"), training) and name in finder.store.objects


def _training_and_calibration(negatives: list[Path], calibration: list[Path], generated: Sequence[Path],
                              calibrate_on: str) -> tuple[list[Path], list[Path]]:
    """Training negatives (the user's kept ones + generated ones) and enrolment calibration negatives.
    `held-out`: the user's held-out ones + a few held-out generated ones; with nothing held out (too
    few negatives) enrolment calibrates on the training negatives, as the run's record says.
    `training`: the user's negatives + the first generated ones, all also trained against."""
    if calibrate_on == "training":
        return negatives + list(generated), negatives + list(generated[:ENROLL_GENERATED_NEGATIVES])
    kept, held = generated_holdout(len(generated), ENROLL_GENERATED_NEGATIVES)
    train_negatives = negatives + [generated[i] for i in kept]
    enroll_negatives = calibration + [generated[i] for i in held]
    return train_negatives, enroll_negatives or train_negatives


def enrolment_negatives(run_dir: Path) -> list[Path]:
    """The negatives a finished run calibrates its object's threshold on (as `personalize` did)."""
    calibrate_on = json.loads((run_dir / "run.json").read_text()).get("calibrate_on", "training")
    return _training_and_calibration(sorted((run_dir / "negatives").glob("*.jpg")),
                                     sorted((run_dir / "calibration").glob("*.jpg")),
                                     sorted((run_dir / "synth" / "negatives").glob("*.jpg")), calibrate_on)[1]


def export_bundle(model, out: Path, reference: Sequence[Path], training: dict | None, name: str | None = None,
                  category: str = "", negatives: Sequence[Path] = (), force: bool = False,
                  masks: Sequence[Path] | None = None) -> Path:
    """Export a merged backbone to a bundle and (optionally) enroll `name` from `reference`."""
    photos = [load_image(p) for p in reference] if reference else []
    write_bundle(model, out, photos, training, force=force)
    if name:
        mask_arrays = synth.read_masks(reference, masks) if masks else None
        Finder.open(out).enroll(name, photos, category=category, negatives=list(negatives), masks=mask_arrays)
    return out


def _as_inputs(paths: Sequence[Path], size: int):
    import numpy as np

    from .runtime.images import resize_to_input

    if not paths:
        return np.zeros((0, size, size, 3), "uint8")
    return np.stack([resize_to_input(load_image(p), size) for p in paths])


def run_calibration(run_dir: Path, size: int):
    """int8 calibration and gate images from a run, disjoint: even-indexed synthetic positives and
    negatives (the user's, held out or not, in their given order, then generated) calibrate; the
    reference photos, odd-indexed positives and negatives check."""
    from .export.precision import CheckSet

    positives = sorted((run_dir / "synth" / "positives").glob("*.jpg"))
    user_negatives = [*(run_dir / "negatives").glob("*.jpg"), *(run_dir / "calibration").glob("*.jpg")]
    negatives = sorted(user_negatives, key=lambda p: p.name) + sorted((run_dir / "synth" / "negatives").glob("*.jpg"))
    calibration = _as_inputs(positives[0::2][:64] + negatives[0::2][:32], size)
    checks = CheckSet(_as_inputs(sorted((run_dir / "photos").glob("*.jpg")), size),
                      _as_inputs(positives[1::2][:32], size), _as_inputs(negatives[1::2][:32], size))
    return calibration, checks


def folder_calibration(folder: Path, size: int):
    """For a pretrained export: half of a folder's photos calibrate, the other half check (cosine only)."""
    from .export.precision import CheckSet

    paths = list_images([folder])
    empty = _as_inputs([], size)
    return _as_inputs(paths[0::2], size), CheckSet(empty, empty, _as_inputs(paths[1::2], size))


def export_run(run_dir: Path, out: Path, force: bool = False, formats: Sequence[str] = ("onnx",),
               precisions: Sequence[str] = ("fp32",), force_int8: bool = False, gate=None) -> Path:
    """Re-export a finished run (its adapter merged), re-enroll its object, and add variants."""
    from .export.precision import Gate
    from .export.variants import add_variants, variant_names

    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise EdgePersrepError(f"{run_dir}: not a run directory (no run.json); pass the --out of `personalize`")
    record = json.loads(run_json.read_text())
    model = BackboneSource.of_run(record).build()
    load_adapter(model, run_dir / "train" / "adapter")
    summary_path = run_dir / "train" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    prepare_output_dir(out, force)
    reference = sorted((run_dir / "photos").glob("*.jpg"))
    negatives = enrolment_negatives(run_dir)
    masks = synth.match_masks(reference, run_dir / "masks") if (run_dir / "masks").is_dir() else None
    export_bundle(model, out, reference, summary, record["name"], record.get("category", ""), negatives,
                  force=force, masks=masks)
    if variant_names(formats, precisions):
        calibration, checks = run_calibration(run_dir, model.spec.preprocess.export_size)
        add_variants(out, model, list(formats), list(precisions), calibration, checks, gate or Gate(), force_int8)
    return out


def export_pretrained(backbone: str, out: Path, weights: Path | None = None, force: bool = False,
                      formats: Sequence[str] = ("onnx",), precisions: Sequence[str] = ("fp32",),
                      calibration: Path | None = None, force_int8: bool = False, gate=None) -> Path:
    """The un-personalized baseline bundle (empty store; enroll objects with `edge-persrep enroll`)."""
    from .export.precision import Gate
    from .export.variants import add_variants, variant_names

    model = create_backbone(backbone, pretrained=True, weights=weights)
    export_bundle(model, out, [], {"personalized": False}, force=force)
    if variant_names(formats, precisions):
        size = model.spec.preprocess.export_size
        images, checks = folder_calibration(calibration, size) if calibration else (None, None)
        add_variants(out, model, list(formats), list(precisions), images, checks, gate or Gate(), force_int8)
    return out
