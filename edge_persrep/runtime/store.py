"""The prototype store: the enrolled objects of one bundle, bound to the model that embedded them.

One file, `prototypes.npz` (numpy zip, loaded with allow_pickle=False), written atomically. It holds
a `meta` JSON document (as uint8 bytes) and, per object, arrays:
    embeddings [K, D]     global embeddings of the K reference photos (unit vectors)
    targets [K, C]        per reference, the (mean+max)/2 feature of its foreground patches
    box_features [K, C]   per reference, mean patch feature inside its foreground box
    photo_j               the reference photos themselves (JPEG bytes, downscaled), so the object
                          can be re-enrolled under a new model and used as a negative for others
`meta` records the model's sha256 (a store from another model is refused: its prototypes would be
silently wrong) and a sha256 over every array, checked on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StoreError
from .files import atomic_write_bytes

STORE_FORMAT_VERSION = 1
SCORING_RULES = ("region", "global")


@dataclass
class Prototype:
    name: str
    category: str
    embeddings: np.ndarray
    targets: np.ndarray
    box_features: np.ndarray
    threshold: float
    photos: list[bytes] = field(default_factory=list)
    scoring: str = "region"  # what `threshold` was calibrated on: "region" (max of global and region
    # score, finder.py) or "global" (the embedding alone; objects enrolled before region scoring)


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

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for i, p in enumerate(self.objects.values()):
            arrays[f"o{i}_embeddings"] = np.asarray(p.embeddings, dtype=np.float32)
            arrays[f"o{i}_targets"] = np.asarray(p.targets, dtype=np.float32)
            arrays[f"o{i}_box_features"] = np.asarray(p.box_features, dtype=np.float32)
            for j, photo in enumerate(p.photos):
                arrays[f"o{i}_photo{j}"] = np.frombuffer(photo, dtype=np.uint8)
            entries.append({"name": p.name, "category": p.category, "threshold": float(p.threshold),
                            "photos": len(p.photos), "scoring": p.scoring})
        meta = {
            "format_version": STORE_FORMAT_VERSION,
            "model_sha256": self.model_sha256,
            "embedding_dim": self.embedding_dim,
            "grid_dim": self.grid_dim,
            "objects": entries,
            "arrays_sha256": _arrays_digest(arrays),
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, model_sha256: str | None = None) -> "PrototypeStore":
        """Read and verify a store; with `model_sha256`, refuse one computed by another model."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError as exc:
            raise StoreError(f"{path}: prototype store not found; enroll an object first") from exc
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise StoreError(f"{path}: prototype store is corrupt ({exc}); re-enroll your objects") from exc
        store = _parse(arrays, path)
        if model_sha256 is not None and store.model_sha256 != model_sha256:
            raise StoreError(
                f"{path}: prototypes were computed with another model (sha256 {store.model_sha256[:12]}..., "
                f"this bundle's model is {model_sha256[:12]}...); re-enroll the objects into this bundle"
            )
        return store


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _parse(arrays: dict[str, np.ndarray], path: Path) -> PrototypeStore:
    def bad(why: str) -> StoreError:
        return StoreError(f"{path}: prototype store is corrupt ({why}); re-enroll your objects")

    raw = arrays.pop("meta", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise bad("no metadata")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"metadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise bad("metadata is not an object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("no format version")
    if version > STORE_FORMAT_VERSION:
        raise StoreError(f"{path}: store format {version} is newer than this edge-persrep understands; upgrade it")
    if meta.get("arrays_sha256") != _arrays_digest(arrays):
        raise bad("checksum mismatch")
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
            emb, tgt, box = (arrays[f"o{i}_{k}"] for k in ("embeddings", "targets", "box_features"))
            photos = [arrays[f"o{i}_photo{j}"].tobytes() for j in range(n_photos)]
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
