"""A bundle: the exported model, its preprocessing and feature layout, and the prototype store.

Layout of a bundle directory:
    bundle.json       manifest (this module validates every field it reads)
    model.onnx        input `image`: uint8 [N, S, S, 3] RGB (normalisation is inside the graph);
                      outputs `embedding` [N, D] (L2-normalised) and `patch_grid` [N, h, w, C]
                      (each patch L2-normalised)
    prototypes.safetensors  the prototype store (self-verifying; see store.py)
The manifest pins the sha256 of every immutable file; the store changes on every enrolment, so it
carries its own checksum and the hash of the model it was computed with instead. docs/bundle-format.md
specifies all of it for apps in other languages. Format 1 bundles (store `prototypes.npz`) still
load; `upgrade` converts one to format 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .files import atomic_write_json, locked, sha256_tree
from .store import LEGACY_SUFFIX, PrototypeStore
from .threads import threads as current_threads

FORMAT = "edge-persrep-bundle"
FORMAT_VERSION = 2  # 2: the store is safetensors + JSON (1: a numpy zip)
MANIFEST = "bundle.json"
STORE_FILE = "prototypes.safetensors"
SCORER_FILE = "scorer.onnx"  # the scoring as an ONNX graph, for apps (export/scorer.py); optional
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class FeatureLayout:
    embedding_dim: int
    grid_dim: int
    grid_height: int
    grid_width: int
    grid_stride: int


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    input_size: int
    layout: FeatureLayout
    model_path: Path
    model_sha256: str
    store_path: Path
    default_threshold: float
    variant: str | None = None  # None: the fp32 ONNX model; else a key of manifest["variants"]
    model_file_sha256: str = ""  # of the file actually run (the variant's, if one was chosen)
    _session: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, root: str | os.PathLike, verify: bool = True, variant: str | None = None) -> "Bundle":
        """Read and validate `root/bundle.json`; with `verify`, check the model's sha256.

        `variant` runs a lower-precision or mobile variant (e.g. "fp16", "int8", "ort") instead of
        the fp32 model. Variants passed the export gate against fp32, so they share its prototype
        store, which stays bound to the fp32 model's hash (`model_sha256`)."""
        import json

        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise BundleError(f"{path}: not found; is {root} a bundle made by `edge-persrep export`?")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: manifest is implausibly large; the bundle is corrupt, re-export it")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: not valid JSON ({exc}); re-export the bundle") from exc
        m = _Manifest(manifest, path)
        if m.get("format", str) != FORMAT:
            raise BundleError(f"{path}: not an {FORMAT} manifest")
        version = m.get("format_version", int)
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{path}: bundle format {version} is newer than this edge-persrep understands "
                f"({FORMAT_VERSION}); upgrade edge-persrep"
            )
        if version < 1:
            raise BundleError(f"{path}: invalid format_version {version}")
        files = m.get("files", dict)
        model_entry = _Manifest(files.get("model"), path, "files.model")
        model_path = _inside(root, model_entry.get("path", str), path)
        model_sha = model_entry.get("sha256", str)
        outputs = m.sub("outputs")
        grid = outputs.sub("patch_grid")
        layout = FeatureLayout(
            embedding_dim=outputs.sub("embedding").get("dim", int),
            grid_dim=grid.get("dim", int),
            grid_height=grid.get("height", int),
            grid_width=grid.get("width", int),
            grid_stride=grid.get("stride", int),
        )
        input_size = m.sub("input").get("size", int)
        store_path = _inside(root, m.get("store", str), path)
        threshold = float(m.get("default_threshold", (int, float)))
        file_path, file_sha = model_path, model_sha
        if variant is not None:
            variants = manifest.get("variants") or {}
            if not isinstance(variants, dict) or variant not in variants:
                have = ", ".join(variants) if isinstance(variants, dict) and variants else "none"
                raise BundleError(f"{path}: no variant '{variant}' in this bundle (variants: {have}); "
                                  "export it with `edge-persrep export --precision/--format`")
            entry = _Manifest(variants[variant], path, f"variants.{variant}")
            if entry.get("format", str) not in ("onnx", "ort"):
                raise BundleError(f"{path}: variant '{variant}' is a {entry.get('format', str)} model; it runs on its "
                                  "own platform (Core ML on Apple devices), not in onnxruntime")
            file_path, file_sha = _inside(root, entry.get("path", str), path), entry.get("sha256", str)
        bundle = cls(root, manifest, input_size, layout, file_path, model_sha, store_path, threshold, variant, file_sha)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        _check_listed_file(self.model_path, self.model_file_sha256, self.root / MANIFEST)
        scorer = self.scorer_entry
        if scorer is not None:
            _check_listed_file(scorer[0], scorer[1], self.root / MANIFEST)

    @property
    def scorer_entry(self) -> tuple[Path, str] | None:
        """(path, sha256) of the bundle's scorer.onnx, or None for bundles exported without one."""
        path = self.root / MANIFEST
        entry = self.manifest["files"].get("scorer")
        if entry is None:
            return None
        m = _Manifest(entry, path, "files.scorer")
        return _inside(self.root, m.get("path", str), path), m.get("sha256", str)

    def verify_variants(self) -> list[str]:
        """Check every listed variant's checksum (files or directories); returns their names."""
        path = self.root / MANIFEST
        variants = self.manifest.get("variants") or {}
        if not isinstance(variants, dict):
            raise BundleError(f"{path}: field 'variants' must be a JSON object; re-export the bundle")
        for name, raw in variants.items():
            entry = _Manifest(raw, path, f"variants.{name}")
            _check_listed_file(_inside(self.root, entry.get("path", str), path), entry.get("sha256", str), path)
        return list(variants)

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(self.model_path, fp16=self.fp16_tolerated)
        return self._session

    def use_session(self, session) -> None:
        """Run the model through another session-like object (e.g. adapters.AdapterSession: a LoRA
        base graph with this object's adapter active) instead of loading model.onnx."""
        self._session = session

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first of the session's)."""
        return self.session.get_providers()[0]

    @property
    def fp16_tolerated(self) -> bool:
        """The bundle's fp16 variant passed the export gate: GPU providers may compute in fp16."""
        entry = (self.manifest.get("variants") or {}).get("fp16") or {}
        return bool(isinstance(entry, dict) and (entry.get("gate") or {}).get("passed"))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3] -> (embedding [N, D], patch_grid [N, h, w, C]). A model with a fixed
        batch size (the mobile variant: 1) is run in chunks of that size."""
        fixed = self.session.get_inputs()[0].shape[0]
        return run_in_chunks(self.session, batch, fixed if isinstance(fixed, int) and fixed > 0 else len(batch))


def upgrade(root: str | os.PathLike) -> bool:
    """Convert a format-1 bundle to format 2 in place: its store rewritten as safetensors + JSON,
    then the manifest. False if it is already format 2. A crash part-way leaves a loadable bundle
    (the old manifest and store stay until the new manifest has replaced the old one)."""
    import json

    root = Path(root)
    bundle = Bundle.load(root)
    if bundle.manifest["format_version"] >= FORMAT_VERSION:
        return False
    old_store = bundle.store_path
    with locked(old_store):  # no enrolment into the old store while it is converted
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        if old_store.suffix == LEGACY_SUFFIX and old_store.exists():
            PrototypeStore.load(old_store, bundle.model_sha256).save(root / STORE_FILE)
        manifest.update(format_version=FORMAT_VERSION, store=STORE_FILE)
        atomic_write_json(root / MANIFEST, manifest)
        if old_store.suffix == LEGACY_SUFFIX:
            old_store.unlink(missing_ok=True)
    return True


def run_in_chunks(session, batch: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model `chunk` images at a time; (embeddings, patch grids) of the whole batch."""
    outs = [session.run(["embedding", "patch_grid"], {"image": batch[i:i + chunk]})
            for i in range(0, len(batch), max(chunk, 1))]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _check_listed_file(path: Path, expected_sha256: str, manifest: Path) -> None:
    """A file (or directory, e.g. an .mlpackage) the manifest lists: present, with its checksum."""
    if not path.exists():
        raise BundleError(f"{path}: listed in {manifest} but missing; re-export the bundle")
    if sha256_tree(path) != expected_sha256:
        raise BundleError(f"{path}: checksum does not match {MANIFEST}; the file is corrupt or was "
                          "modified, re-export the bundle")


PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
                       "CPUExecutionProvider")


def available_providers(preferred: tuple[str, ...] = PREFERRED_PROVIDERS) -> list[str]:
    """The execution providers this onnxruntime build has, best first (Jetson: TensorRT or CUDA;
    Apple: CoreML), always ending with the CPU so that any unsupported node falls back cleanly."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in have and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


# x86 CPUs without VNNI (AVX2, AVX-512F) compute int8 convolutions with VPMADDUBSW, which saturates
# its int16 pair sums: an int8 Lite0 fell to min cosine 0.978 to fp32 on an AVX2 machine. Precision
# mode avoids it (0.996, and still faster than fp32 there); it changes nothing on ARM, on VNNI CPUs
# or for float models. Every int8 variant's manifest entry repeats it for apps in other languages.
# Spinning off: after a run, ORT's idle threads otherwise spin and starve the numpy work that
# follows (region scoring's matrix product): `find` took 67-81 ms with spinning, 29 ms without
# (`edge-persrep bench`, Lite0, 2 cores).
SESSION_CONFIG = {"session.x64quantprecision": "1", "session.intra_op.allow_spinning": "0"}


def trt_cache_dir() -> Path:
    """Where TensorRT keeps the engines it builds (minutes on a Jetson the first time, then loaded):
    $EDGE_PERSREP_TRT_CACHE, else ~/.cache/edge-persrep/tensorrt. TensorRT names each engine after
    the model and the GPU, so one directory serves every bundle."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("EDGE_PERSREP_TRT_CACHE") or os.path.join(base, "edge-persrep", "tensorrt"))


def provider_options(providers: list[str], fp16: bool = False) -> list[tuple[str, dict[str, str]]]:
    """Each execution provider with its options: TensorRT caches its engines (trt_cache_dir) and runs
    in fp16 when `fp16` (the bundle's fp16 variant passed the export gate, so the model tolerates it);
    the others run as they come."""
    chosen = []
    for name in providers:
        options: dict[str, str] = {}
        if name == "TensorrtExecutionProvider":
            options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache_dir()),
                       "trt_timing_cache_enable": "True", "trt_fp16_enable": "True" if fp16 else "False"}
        chosen.append((name, options))
    return chosen


def make_session(model_path: Path, providers: list[str] | None = None, threads: int | None = None,
                 config: dict[str, str] = SESSION_CONFIG, fp16: bool = False):
    # onnxruntime >= 1.2x writes a device id and an event database under ~/.cache/Microsoft unless
    # told not to (found by tests/test_reliability.py); photos of people's homes deserve no telemetry.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    ort.disable_telemetry_events()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    threads = threads or current_threads()  # the CLI's --threads (runtime/threads.py), else ORT's default
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), options,
                                    providers=provider_options(providers or available_providers(), fp16))
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise BundleError(f"{model_path}: onnxruntime cannot load it ({exc}); re-export the bundle") from exc


class _Manifest:
    """Typed access to a manifest section; any wrong shape is a BundleError naming the key."""

    def __init__(self, data: Any, path: Path, where: str = ""):
        if not isinstance(data, dict):
            raise BundleError(f"{path}: {where or 'manifest'} must be a JSON object; re-export the bundle")
        self.data, self.path, self.where = data, path, where

    def get(self, key: str, kind):
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            name = f"{self.where}.{key}" if self.where else key
            raise BundleError(f"{self.path}: field '{name}' is missing or has the wrong type; re-export the bundle")
        return value

    def sub(self, key: str) -> "_Manifest":
        return _Manifest(self.get(key, dict), self.path, f"{self.where}.{key}" if self.where else key)


def _inside(root: Path, name: str, manifest_path: Path) -> Path:
    """A file the manifest names must be a plain file name inside the bundle directory."""
    if not name or name != Path(name).name or name in (".", "..") or "\\" in name or "\x00" in name:
        raise BundleError(f"{manifest_path}: file name {name!r} points outside the bundle; refusing to load it")
    return root / name
