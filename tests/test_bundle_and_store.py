"""A bundle or store that is missing, changed, foreign or malformed is refused with a clear error."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_persrep.runtime import Bundle, BundleError, Finder, Prototype, PrototypeStore, StoreError


def _manifest(bundle):
    return json.loads((bundle / "bundle.json").read_text())


def _write(bundle, manifest):
    (bundle / "bundle.json").write_text(json.dumps(manifest))


def test_changed_byte_in_model_is_refused(bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx: checksum"):
        Bundle.load(bundle_copy)


def test_missing_model_and_missing_manifest(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(bundle_copy)
    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json: not found"):
        Bundle.load(bundle_copy)


def test_newer_format_version_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["format_version"] = 99
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match="upgrade edge-persrep"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "sub/model.onnx", "..", ""])
def test_paths_outside_the_bundle_are_refused(bundle_copy, path):
    m = _manifest(bundle_copy)
    m["files"]["model"]["path"] = path
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match="outside the bundle|wrong type"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(outputs="nope"),
    lambda m: m["outputs"]["embedding"].update(dim="1280"),
    lambda m: m["input"].update(size=True),
    lambda m: m.update(files={"model": {"path": {"nested": "model.onnx"}}}),
    lambda m: m.pop("store"),
])
def test_wrong_types_are_refused(bundle_copy, mutate):
    m = _manifest(bundle_copy)
    mutate(m)
    _write(bundle_copy, m)
    with pytest.raises(BundleError, match="wrong type|must be a JSON object"):
        Bundle.load(bundle_copy)


def _store(sha="a" * 64, n=1):
    store = PrototypeStore(sha, 4, 3)
    for i in range(n):
        store.add(Prototype(f"obj{i}", "mug", np.eye(2, 4, dtype=np.float32), np.ones((2, 3), np.float32),
                            np.ones((2, 3), np.float32), 0.5, [b"\xff\xd8fakejpeg"]))
    return store


def test_store_roundtrip_and_model_binding(tmp_path):
    path = tmp_path / "p.npz"
    _store().save(path)
    loaded = PrototypeStore.load(path, "a" * 64)
    assert list(loaded.objects) == ["obj0"] and loaded.objects["obj0"].photos == [b"\xff\xd8fakejpeg"]
    with pytest.raises(StoreError, match="another model"):
        PrototypeStore.load(path, "b" * 64)


def test_store_from_another_model_is_refused_by_finder(bundle_copy):
    _store(sha="c" * 64).save(bundle_copy / "prototypes.npz")
    with pytest.raises(StoreError, match="re-enroll"):
        Finder.open(bundle_copy)


def test_corrupt_store_is_refused(tmp_path):
    path = tmp_path / "p.npz"
    _store().save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        PrototypeStore.load(path)


def test_failed_save_leaves_the_old_store(tmp_path, monkeypatch):
    path = tmp_path / "p.npz"
    _store(n=1).save(path)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _store(n=2).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temp files left behind


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: (st.lists(children, max_size=4)
                                      | st.dictionaries(st.text(max_size=12), children, max_size=5)),
                    max_leaves=20))
def test_fuzzed_manifest_only_loads_or_raises_bundle_error(tmp_path_factory, doc):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "bundle.json").write_text(json.dumps(doc))
    try:
        Bundle.load(root)
    except BundleError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzzed_store_bytes_only_load_or_raise_store_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "p.npz"
    path.write_bytes(data)
    try:
        PrototypeStore.load(path)
    except StoreError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["format_version", "model_sha256", "embedding_dim", "grid_dim", "objects",
                                        "arrays_sha256"]),
                       st.none() | st.integers(-2, 5) | st.text(max_size=8) | st.lists(st.dictionaries(
                           st.sampled_from(["name", "category", "threshold", "photos"]),
                           st.none() | st.integers(-1, 3) | st.text(max_size=5) | st.floats(allow_nan=False)),
                 max_size=2)))
def test_fuzzed_store_metadata_only_loads_or_raises_store_error(tmp_path_factory, meta):
    import io

    path = tmp_path_factory.mktemp("fuzz") / "p.npz"
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), o0_embeddings=np.ones((1, 4), np.float32))
    path.write_bytes(buffer.getvalue())
    try:
        PrototypeStore.load(path)
    except StoreError:
        pass
