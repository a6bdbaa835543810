"""The settings of the personalized runs a benchmark trains, as `personalize` takes them: one
definition for benchmarks/personalization.py and benchmarks/joint.py, and one name for the folders
their runs go to, so that runs of other settings are never resumed into each other."""

from __future__ import annotations

import argparse

from ..server_side.options import DEFAULT_PRESET, DEFAULT_SYNTH, TRAIN_PRECISION_CHOICES


def add_training_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--preset", default=DEFAULT_PRESET)
    ap.add_argument("--synth", default=DEFAULT_SYNTH, help="personalize --synth: augment | context | ...")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--train-precision", default="auto", choices=TRAIN_PRECISION_CHOICES,
                    help="personalize --train-precision (the README's figures before 2026-11-30's quick preset: "
                         "fp32, --steps 160)")


def resolve_training_options(args: argparse.Namespace) -> str:
    """Resolve `--train-precision auto` to what this machine trains in (args.train_precision then
    says what ran, for the report) and return the runs' label SYNTH-PRECISION-NSTEPS (-NPOSITIVES when given)."""
    from ..server_side.contrastive import get_preset, resolve_precision

    preset = get_preset(args.preset)
    args.train_precision = resolve_precision(args.train_precision, "cpu", preset.cache_trunk)
    label = f"{args.synth}-{args.train_precision}-{args.steps or preset.steps}steps"
    positives = getattr(args, "positives", None)  # benchmarks/personalization.py's option
    return label if positives is None else f"{label}-{positives}positives"
