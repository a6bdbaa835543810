"""Lower-precision variants of an exported fp32 model, and the gate every one must pass.

- fp16 (GPUs, Jetson): weights and activations in half precision; input (uint8) and outputs
  (float32) keep their types so the runtime is unchanged. On a CPU fp16 is no faster.
- int8 (CPUs, NPUs): static quantization (QDQ), per-channel signed weights, unsigned activations
  calibrated (min-max) on the user's own photos and synthetic data. Measured on personalized Lite0
  runs of three seeds (README, "int8"), three choices make it reproducible:
  * the session runs in ONNX Runtime's x64 precision mode (runtime.bundle.SESSION_CONFIG): on x86
    CPUs without VNNI the int8 kernels otherwise saturate (VPMADDUBSW) and the same model scored
    min cosine 0.72 on an AVX2 machine while passing on a VNNI one. The gate measures in that mode.
  * only the compute and its activations are quantized (QUANTIZED_OPS): mean pooling and the
    in-graph L2 normalisation stay fp32 (quantizing its x*x squeezed a sum of squares into 256
    levels and the outputs stopped being unit vectors).
  * the first FP32_LEADING_CONVS convolutions stay fp32 (Lite0: the stem and block 0, at 160x160
    with 3-32 channels): min cosine 0.981 with them quantized, 0.993-0.996 without.

Gate (int8 can silently wreck embeddings): on held-out images not used for calibration, compare
the variant with fp32: the minimum cosine of the global embedding, the mean cosine of the patch
grid, and the classification AP of the enrolled object (positives vs negatives, score = max cosine
to the reference photos). A variant that fails (default: min cosine < 0.99 or AP drop > 0.01) is
not shipped unless forced; the measured numbers go in the error and in bundle.json. The patch grid
(which detect and segment read) is gated too: mean cosine >= 0.95.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.bundle import make_session, run_in_chunks
from ..runtime.errors import EdgePersrepError
from ..runtime.metrics import average_precision
from .onnx_export import cosines


class GateError(EdgePersrepError):
    """A lower-precision variant drifted too far from fp32."""


@dataclass(frozen=True)
class Gate:
    min_cosine: float = 0.99  # worst global embedding over the check images
    max_ap_drop: float = 0.01
    min_grid_cosine: float = 0.95  # mean over every patch of every check image (detect/segment)
    max_norm_error: float = 1e-3  # outputs must stay unit vectors: the runtime's cosine is a dot product

    @classmethod
    def with_overrides(cls, **values: float | None) -> "Gate":
        """The default gate with the values a user set (None: keep the default)."""
        return cls(**{k: v for k, v in values.items() if v is not None})


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


QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Add", "Clip", "Relu")  # compute + activations (a ReLU6 after a
# Conv folds into its output range); mean pooling and the L2 normalisation stay fp32
FP32_LEADING_CONVS = 3  # Lite0: stem + block 0's depthwise and pointwise convs (a ViT has one: its patch embedding)


def leading_convs(model_path: Path, count: int = FP32_LEADING_CONVS) -> list[str]:
    """The names of the graph's first `count` Conv nodes, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type == "Conv"][:count]


def to_int8(src: Path, dst: Path, calibration: np.ndarray) -> str:
    """Static QDQ int8 (see the module docstring for each choice); returns the calibration method."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) < 8:
        raise EdgePersrepError(f"int8 calibration needs at least 8 images, got {len(calibration)}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        quantize_static(str(prepared), str(dst), _Reader(calibration), calibrate_method=CalibrationMethod.MinMax,
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
                        nodes_to_exclude=leading_convs(prepared))
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
    norms = np.concatenate([np.linalg.norm(eq, axis=-1).ravel(), np.linalg.norm(gq, axis=-1).ravel()])
    nonzero = norms[norms > 1e-6]  # a ReLU network may output an all-zero patch, left at zero
    embedding_cosines = cosines(e32, eq)
    return {"check_images": int(len(images)),
            "min_cosine_embedding": round(float(embedding_cosines.min()), 5),
            "mean_cosine_embedding": round(float(embedding_cosines.mean()), 5),
            "mean_cosine_patch_grid": round(float(cosines(g32, gq).mean()), 5),
            "max_norm_error": round(float(np.abs(nonzero - 1).max(initial=0.0)), 6),
            "ap_fp32": None if ap32 is None else round(ap32, 4),
            "ap": None if apq is None else round(apq, 4),
            "ap_drop": None if ap32 is None else round(ap32 - apq, 4)}


def gate_verdict(check: dict, gate: Gate) -> list[str]:
    """The reasons a variant fails the gate (empty: it passes)."""
    reasons = []
    if check["min_cosine_embedding"] < gate.min_cosine:
        reasons.append(f"min embedding cosine {check['min_cosine_embedding']:.4f} < {gate.min_cosine}")
    if check["mean_cosine_patch_grid"] < gate.min_grid_cosine:
        reasons.append(f"mean patch-grid cosine {check['mean_cosine_patch_grid']:.4f} < {gate.min_grid_cosine}")
    if check["max_norm_error"] > gate.max_norm_error:
        reasons.append(f"outputs are not unit vectors (norm off by {check['max_norm_error']:.2g})")
    if check["ap_drop"] is not None and check["ap_drop"] > gate.max_ap_drop:
        reasons.append(f"AP drop {check['ap_drop']:.4f} > {gate.max_ap_drop} (fp32 {check['ap_fp32']}, "
                       f"variant {check['ap']})")
    return reasons
