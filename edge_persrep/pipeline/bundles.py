"""Bundles from a backbone: a personalized run's (`export RUN`) or the pretrained baseline's, with
optional fp16 / int8 / ORT / Core ML variants, each gated against fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..export.bundle_writer import prepare_output_dir, write_bundle
from ..runtime.finder import Finder
from ..runtime.images import input_batch, list_images, load_image
from ..server_side import synth
from ..server_side.backbones import BackboneSource, create_backbone
from ..server_side.contrastive import load_adapter
from .run_dir import RunDir


def export_bundle(model, out: Path, reference: Sequence[Path], training: dict | None, name: str | None = None,
                  category: str = "", negatives: Sequence[Path] = (), force: bool = False,
                  masks: Sequence[Path] | None = None, size: int | None = None) -> Path:
    """Export a merged backbone to a bundle (input `size`, default the backbone's export size) and
    (optionally) enroll `name` from `reference`."""
    photos = [load_image(p) for p in reference] if reference else []
    write_bundle(model, out, photos, training, force=force, size=size)
    if name:
        mask_arrays = synth.read_masks(reference, masks) if masks else None
        Finder.open(out).enroll(name, photos, category=category, negatives=list(negatives), masks=mask_arrays)
    return out


def export_run(run_dir: Path, out: Path, force: bool = False, formats: Sequence[str] = ("onnx",),
               precisions: Sequence[str] = ("fp32",), force_int8: bool = False, gate=None,
               size: int | None = None) -> Path:
    """Re-export a finished run (its adapter merged; input `size`, default the backbone's), re-enroll
    its object, and add variants."""
    from ..export.precision import Gate
    from ..export.variants import add_variants, variant_names

    run = RunDir.existing(run_dir)
    record = run.read()
    model = BackboneSource.of_run(record).build()
    load_adapter(model, run.train / "adapter")
    prepare_output_dir(out, force)
    reference = run.reference()
    masks = synth.match_masks(reference, run.masks) if run.masks.is_dir() else None
    export_bundle(model, out, reference, run.training_summary(), record["name"], record.get("category", ""),
                  run.enrolment_negatives(record), force=force, masks=masks, size=size)
    if variant_names(formats, precisions):
        calibration, checks = run.int8_calibration(size or model.spec.preprocess.export_size)
        add_variants(out, model, list(formats), list(precisions), calibration, checks, gate or Gate(), force_int8)
    return out


def folder_calibration(folder: Path, size: int):
    """For a pretrained export: half of a folder's photos calibrate, the other half check (cosine only)."""
    from ..export.precision import CheckSet

    paths = list_images([folder])
    empty = input_batch([], size)
    return input_batch(paths[0::2], size), CheckSet(empty, empty, input_batch(paths[1::2], size))


def export_pretrained(backbone: str, out: Path, weights: Path | None = None, force: bool = False,
                      formats: Sequence[str] = ("onnx",), precisions: Sequence[str] = ("fp32",),
                      calibration: Path | None = None, force_int8: bool = False, gate=None,
                      size: int | None = None) -> Path:
    """The un-personalized baseline bundle (empty store; enroll objects with `edge-persrep enroll`)."""
    from ..export.precision import Gate
    from ..export.variants import add_variants, variant_names

    model = create_backbone(backbone, pretrained=True, weights=weights)
    export_bundle(model, out, [], {"personalized": False}, force=force, size=size)
    if variant_names(formats, precisions):
        size = size or model.spec.preprocess.export_size
        images, checks = folder_calibration(calibration, size) if calibration else (None, None)
        add_variants(out, model, list(formats), list(precisions), images, checks, gate or Gate(), force_int8)
    return out
