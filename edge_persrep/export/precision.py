"""Lower-precision variants of an exported fp32 model, and the gate every one must pass.

- fp16 (GPUs, Jetson): weights and activations in half precision; input (uint8) and outputs
  (float32) keep their types so the runtime is unchanged. On a CPU fp16 is no faster.
- int8 (CPUs, NPUs): static quantization (QDQ), per-channel weights, activations calibrated on the
  user's own photos and synthetic data (99.999th percentile, which clips rare outliers).

Gate (int8 can silently wreck embeddings): on held-out images not used for calibration, compare
the variant with fp32: the minimum cosine of the global embedding, the mean cosine of the patch
grid, and the classification AP of the enrolled object (positives vs negatives, score = max cosine
to the reference photos). A variant that fails (default: min cosine < 0.99 or AP drop > 0.01) is
not shipped unless forced; the measured numbers go in the error and in bundle.json.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..eval.metrics import average_precision
from ..runtime.bundle import make_session, run_in_chunks
from ..runtime.errors import EdgePersrepError
from .onnx_export import unit_cosines


class GateError(EdgePersrepError):
    """A lower-precision variant drifted too far from fp32."""


@dataclass(frozen=True)
class Gate:
    min_cosine: float = 0.99
    max_ap_drop: float = 0.01


@dataclass
class CheckSet:
    """Held-out images for the gate: references define the prototype; positives/negatives score AP."""

    references: np.ndarray  # uint8 [R, S, S, 3]
    positives: np.ndarray  # uint8 [P, S, S, 3]
    negatives: np.ndarray  # uint8 [N, S, S, 3]

    @property
    def all(self) -> np.ndarray:
        return np.concatenate([self.references, self.positives, self.negatives])


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


class _Reader:
    def __init__(self, images: np.ndarray):
        self._it = iter(images)

    def get_next(self):
        image = next(self._it, None)
        return None if image is None else {"image": image[None]}


def to_int8(src: Path, dst: Path, calibration: np.ndarray) -> str:
    """Static QDQ int8, per-channel weights, percentile-calibrated activations; returns the
    calibration method used (ORT's histogram calibrator fails on near-constant tensors, as in a
    random-init network: those models fall back to min-max)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < 8:
        raise EdgePersrepError(f"int8 calibration needs at least 8 images, got {len(calibration)}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        common = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                      weight_type=QuantType.QInt8)
        try:
            quantize_static(str(prepared), str(dst), _Reader(calibration), calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": 99.999}, **common)
            return "percentile 99.999"
        except ValueError:
            quantize_static(str(prepared), str(dst), _Reader(calibration), calibrate_method=CalibrationMethod.MinMax,
                            **common)
            return "minmax"


def _ap(embeddings: np.ndarray, checks: CheckSet) -> float | None:
    r, p = len(checks.references), len(checks.positives)
    if r == 0 or p == 0 or len(checks.negatives) == 0:
        return None
    scores = (embeddings[r:] @ embeddings[:r].T).max(axis=1)
    return average_precision(scores, np.arange(len(scores)) < p)


def measure(reference: Path, candidate: Path, checks: CheckSet) -> dict:
    """Agreement of `candidate` with the fp32 `reference` model on the check images."""
    images = checks.all
    e32, g32 = run_in_chunks(make_session(reference, ["CPUExecutionProvider"]), images, 1)
    eq, gq = run_in_chunks(make_session(candidate, ["CPUExecutionProvider"]), images, 1)
    ap32, apq = _ap(e32, checks), _ap(eq, checks)
    return {"check_images": int(len(images)),
            "min_cosine_embedding": round(float(unit_cosines(e32, eq).min()), 5),
            "mean_cosine_embedding": round(float(unit_cosines(e32, eq).mean()), 5),
            "mean_cosine_patch_grid": round(float(unit_cosines(g32, gq).mean()), 5),
            "ap_fp32": None if ap32 is None else round(ap32, 4),
            "ap": None if apq is None else round(apq, 4),
            "ap_drop": None if ap32 is None else round(ap32 - apq, 4)}


def gate_verdict(check: dict, gate: Gate) -> list[str]:
    """The reasons a variant fails the gate (empty: it passes)."""
    reasons = []
    if check["min_cosine_embedding"] < gate.min_cosine:
        reasons.append(f"min embedding cosine {check['min_cosine_embedding']:.4f} < {gate.min_cosine}")
    if check["ap_drop"] is not None and check["ap_drop"] > gate.max_ap_drop:
        reasons.append(f"AP drop {check['ap_drop']:.4f} > {gate.max_ap_drop} (fp32 {check['ap_fp32']}, "
                       f"variant {check['ap']})")
    return reasons
