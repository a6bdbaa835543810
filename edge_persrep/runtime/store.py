"""The prototype store: the enrolled objects of one bundle, bound to the model that embedded them.

One file, `prototypes.safetensors`, written atomically (docs/bundle-format.md specifies it for ports
to other languages). Per object i, float32 / uint8 tensors:
    o{i}.embeddings [K, D]     global embeddings of the K reference photos (unit vectors)
    o{i}.targets [K, C]        per reference, the (mean+max)/2 feature of its foreground patches
    o{i}.box_features [K, C]   per reference, mean patch feature inside its foreground box
    o{i}.photo{j} [bytes]      the reference photos themselves (JPEG, downscaled), so the object can
                               be re-enrolled under a new model and used as a negative for others
and `meta` [bytes], a UTF-8 JSON document: the format version, the model's sha256 (a store from
another model is refused: its prototypes would be silently wrong), the dimensions, and per object i
its name, category, threshold, photo count and scoring rule. The header's `__metadata__` says
{"format": "edge-persrep-store", "data_sha256": sha256 of the data section}, checked on load.

Format 1 (`prototypes.npz`, a numpy zip of the same arrays with the JSON as a uint8 array `meta`,
bundles exported before format 2) is still read; it is not written: `edge-persrep upgrade BUNDLE`
converts such a bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError
from .files import atomic_write_bytes, sha256_bytes
from .tensor_file import from_safetensors, to_safetensors

STORE_FORMAT_VERSION = 2
STORE_FORMAT = "edge-persrep-store"
LEGACY_SUFFIX = ".npz"  # format 1
SCORING_RULES = ("mean", "region", "global")  # finder.py: how an object's references are combined


@dataclass
class Prototype:
    name: str
    category: str
    embeddings: np.ndarray
    targets: np.ndarray
    box_features: np.ndarray
    threshold: float
    photos: list[bytes] = field(default_factory=list)
    scoring: str = "mean"  # what `threshold` was calibrated on (finder.py): "mean" (max of global and
    # region score, each the mean over the references), "region" (the same with the best reference;
    # objects enrolled before 2026-12-05) or "global" (the embedding alone; before region scoring)


@dataclass
class PrototypeStore:
    model_sha256: str
    embedding_dim: int
    grid_dim: int
    objects: dict[str, Prototype] = field(default_factory=dict)

    def add(self, prototype: Prototype) -> None:
        if prototype.embeddings.shape[1:] != (self.embedding_dim,):
            raise StoreError(f"prototype '{prototype.name}' has embedding shape {prototype.embeddings.shape}, "
                             f"store expects [K, {self.embedding_dim}]")
        if prototype.targets.shape[1:] != (self.grid_dim,) or prototype.box_features.shape[1:] != (self.grid_dim,):
            raise StoreError(f"prototype '{prototype.name}' has patch features of the wrong width, "
                             f"store expects [K, {self.grid_dim}]")
        self.objects[prototype.name] = prototype

    def scorer_inputs(self) -> dict[str, np.ndarray]:
        """The store's tensors as the bundle's `scorer.onnx` takes them (export/scorer.py): every
        object's references stacked in the store's order, with their owners as a one-hot matrix."""
        objects = list(self.objects.values())
        owner = np.repeat(np.arange(len(objects)), [len(p.embeddings) for p in objects])
        categories = np.array([p.category for p in objects])
        return {"reference_embeddings": np.concatenate([p.embeddings for p in objects]).astype(np.float32),
                "reference_box_features": np.concatenate([p.box_features for p in objects]).astype(np.float32),
                "reference_targets": np.concatenate([p.targets for p in objects]).astype(np.float32),
                "reference_object": np.eye(len(objects), dtype=np.float32)[owner],
                "region_scoring": np.array([p.scoring != "global" for p in objects], np.float32),
                "mean_scoring": np.array([p.scoring == "mean" for p in objects], np.float32),
                "thresholds": np.array([p.threshold for p in objects], np.float32),
                "same_category": (categories[:, None] == categories[None, :]).astype(np.float32)}

    def to_bytes(self) -> bytes:
        tensors: dict[str, np.ndarray] = {}
        entries = []
        for i, p in enumerate(self.objects.values()):
            tensors[f"o{i}.embeddings"] = np.asarray(p.embeddings, dtype=np.float32)
            tensors[f"o{i}.targets"] = np.asarray(p.targets, dtype=np.float32)
            tensors[f"o{i}.box_features"] = np.asarray(p.box_features, dtype=np.float32)
            entries.append({"name": p.name, "category": p.category, "threshold": float(p.threshold),
                            "photos": len(p.photos), "scoring": p.scoring})
        for i, p in enumerate(self.objects.values()):  # after the float tensors, which stay 4-byte aligned
            for j, photo in enumerate(p.photos):
                tensors[f"o{i}.photo{j}"] = np.frombuffer(photo, dtype=np.uint8)
        meta = {
            "format_version": STORE_FORMAT_VERSION,
            "model_sha256": self.model_sha256,
            "embedding_dim": self.embedding_dim,
            "grid_dim": self.grid_dim,
            "objects": entries,
        }
        tensors["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        # the data section is the tensors' bytes in this order (tensor_file.to_safetensors); its
        # checksum covers the metadata document too, so a flipped digit of a threshold is caught
        data_sha256 = sha256_bytes(b"".join(np.ascontiguousarray(t).tobytes() for t in tensors.values()))
        return to_safetensors(tensors, {"format": STORE_FORMAT, "data_sha256": data_sha256})

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.suffix == LEGACY_SUFFIX:
            raise StoreError(f"{path}: a format-1 prototype store is read-only in this version of edge-persrep; "
                             f"run `edge-persrep upgrade {path.parent}` and try again")
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, model_sha256: str | None = None) -> "PrototypeStore":
        """Read and verify a store; with `model_sha256`, refuse one computed by another model."""
        path = Path(path)
        try:
            arrays, meta = (_read_legacy if path.suffix == LEGACY_SUFFIX else _read)(path)
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: prototype store not found; enroll an object first") from exc
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise StoreError(f"{path}: prototype store is corrupt ({exc}); re-enroll your objects") from exc
        store = _parse(arrays, meta, path)
        if model_sha256 is not None and store.model_sha256 != model_sha256:
            raise StoreError(
                f"{path}: prototypes were computed with another model (sha256 {store.model_sha256[:12]}..., "
                f"this bundle's model is {model_sha256[:12]}...); re-enroll the objects into this bundle"
            )
        return store


def _read(path: Path) -> tuple[dict[str, np.ndarray], object]:
    """Format 2: tensors and the metadata document; the data section's checksum is verified."""
    tensors, header, body = from_safetensors(path.read_bytes())
    if header.get("format") != STORE_FORMAT:
        raise ValueError(f"not an {STORE_FORMAT} file")
    if header.get("data_sha256") != sha256_bytes(body):
        raise ValueError("checksum mismatch")
    return tensors, _meta_document(tensors.pop("meta", None))


def _meta_document(raw: np.ndarray | None) -> object:
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("no metadata")
    try:
        return json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"metadata is not JSON: {exc}") from exc


def _read_legacy(path: Path) -> tuple[dict[str, np.ndarray], object]:
    """Format 1 (numpy zip): the same arrays named o{i}_embeddings ..., the metadata as uint8 `meta`."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = _meta_document(arrays.pop("meta", None))
    if not isinstance(meta, dict) or meta.get("arrays_sha256") != _legacy_digest(arrays):
        raise ValueError("checksum mismatch")
    return {k.replace("_", ".", 1): v for k, v in arrays.items()}, meta


def _legacy_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _parse(arrays: dict[str, np.ndarray], meta: object, path: Path) -> PrototypeStore:
    def bad(why: str) -> StoreError:
        return StoreError(f"{path}: prototype store is corrupt ({why}); re-enroll your objects")

    if not isinstance(meta, dict):
        raise bad("metadata is not an object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("no format version")
    if version > STORE_FORMAT_VERSION:
        raise StoreError(f"{path}: store format {version} is newer than this edge-persrep understands; upgrade it")
    sha, d, c, entries = (meta.get(k) for k in ("model_sha256", "embedding_dim", "grid_dim", "objects"))
    if not (isinstance(sha, str) and _is_count(d) and _is_count(c) and isinstance(entries, list)):
        raise bad("metadata fields have wrong types")
    store = PrototypeStore(sha, d, c)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise bad(f"object {i} is not an object")
        name, category, threshold, n_photos = (entry.get(k) for k in ("name", "category", "threshold", "photos"))
        scoring = entry.get("scoring", "global")  # stores written before region scoring have none
        if not (isinstance(name, str) and name and isinstance(category, str) and _is_count(n_photos, zero=True)
                and isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                and scoring in SCORING_RULES):
            raise bad(f"object {i} has fields of the wrong type")
        try:
            emb, tgt, box = (arrays[f"o{i}.{k}"] for k in ("embeddings", "targets", "box_features"))
            photos = [arrays[f"o{i}.photo{j}"].tobytes() for j in range(n_photos)]
        except KeyError as exc:
            raise bad(f"missing array {exc}") from exc
        shapes_ok = (emb.ndim == 2 and emb.shape[1] == d and tgt.ndim == 2 and tgt.shape[1] == c
                     and box.shape == tgt.shape and len(emb) == len(tgt) and len(emb) > 0)
        if not shapes_ok or any(a.dtype != np.float32 for a in (emb, tgt, box)):
            raise bad(f"object '{name}' has arrays of the wrong shape or type")
        store.objects[name] = Prototype(name, category, emb, tgt, box, float(threshold), photos, scoring)
    return store


def _is_count(value, zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if zero else value > 0)
