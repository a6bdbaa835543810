"""A bundle or store that is missing, changed, foreign or malformed is refused with a clear error."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_persrep.runtime import Bundle, BundleError, Finder, Prototype, PrototypeStore, StoreError, list_images


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


def test_changed_scorer_graph_is_refused(bundle_copy):
    scorer = bundle_copy / "scorer.onnx"
    scorer.write_bytes(scorer.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="scorer.onnx: checksum"):
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
    path = tmp_path / "p.safetensors"
    _store().save(path)
    loaded = PrototypeStore.load(path, "a" * 64)
    assert list(loaded.objects) == ["obj0"] and loaded.objects["obj0"].photos == [b"\xff\xd8fakejpeg"]
    with pytest.raises(StoreError, match="another model"):
        PrototypeStore.load(path, "b" * 64)


def test_store_from_another_model_is_refused_by_finder(bundle_copy):
    _store(sha="c" * 64).save(bundle_copy / "prototypes.safetensors")
    with pytest.raises(StoreError, match="re-enroll"):
        Finder.open(bundle_copy)


def test_corrupt_store_is_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    _store().save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt"):
        PrototypeStore.load(path)


def test_failed_save_leaves_the_old_store(tmp_path, monkeypatch):
    path = tmp_path / "p.safetensors"
    _store(n=1).save(path)
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _store(n=2).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp files left behind


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
    path = tmp_path_factory.mktemp("fuzz") / "p.safetensors"
    path.write_bytes(data)
    try:
        PrototypeStore.load(path)
    except StoreError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["format_version", "model_sha256", "embedding_dim", "grid_dim", "objects"]),
                       st.none() | st.integers(-2, 5) | st.text(max_size=8) | st.lists(st.dictionaries(
                           st.sampled_from(["name", "category", "threshold", "photos"]),
                           st.none() | st.integers(-1, 3) | st.text(max_size=5) | st.floats(allow_nan=False)),
                 max_size=2)))
def test_fuzzed_store_metadata_only_loads_or_raises_store_error(tmp_path_factory, meta):
    from edge_persrep.runtime.files import sha256_bytes
    from edge_persrep.runtime.store import STORE_FORMAT
    from edge_persrep.runtime.tensor_file import to_safetensors

    tensors = {"o0.embeddings": np.ones((1, 4), np.float32), "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    checksum = sha256_bytes(b"".join(t.tobytes() for t in tensors.values()))  # valid: the fields behind it are reached
    path = tmp_path_factory.mktemp("fuzz") / "p.safetensors"
    path.write_bytes(to_safetensors(tensors, {"format": STORE_FORMAT, "data_sha256": checksum}))
    try:
        PrototypeStore.load(path)
    except StoreError:
        pass


# --- the language-neutral store (bundle format 2) and format-1 bundles -----------------------------

def test_store_file_is_safetensors_that_the_reference_library_reads():
    """Any platform's safetensors reader gets the tensors; ours reads what the library writes."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from edge_persrep.runtime.tensor_file import from_safetensors

    store = _store(n=2)
    data = store.to_bytes()
    tensors = safetensors_numpy.load(data)
    assert sorted(tensors) == sorted(["meta"] + [f"o{i}.{k}" for i in range(2)
                                                 for k in ("embeddings", "targets", "box_features", "photo0")])
    np.testing.assert_array_equal(tensors["o1.embeddings"], store.objects["obj1"].embeddings)
    assert tensors["o0.photo0"].tobytes() == b"\xff\xd8fakejpeg" and tensors["o0.targets"].dtype == np.float32
    meta = json.loads(tensors["meta"].tobytes())
    assert from_safetensors(data)[1]["format"] == "edge-persrep-store"
    assert [o["name"] for o in meta["objects"]] == ["obj0", "obj1"] and meta["format_version"] == 2

    written_by_library = safetensors_numpy.save({"b": np.arange(6, dtype=np.float32).reshape(2, 3),
                                                 "a": np.frombuffer(b"xyz", np.uint8)}, metadata={"k": "v"})
    ours, metadata, _ = from_safetensors(written_by_library)
    np.testing.assert_array_equal(ours["b"], [[0, 1, 2], [3, 4, 5]])
    assert ours["a"].tobytes() == b"xyz" and metadata == {"k": "v"}


def _raw_safetensors(header: object, body: bytes) -> bytes:
    import struct

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize("data,why", [
    (b"\x05\0\0", "shorter than"),
    (b"\xff\0\0\0\0\0\0\0{}", "past the end"),
    (_raw_safetensors([1, 2], b""), "not a JSON object"),
    (_raw_safetensors({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "does not match"),
    (_raw_safetensors({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(5)), "fill the file"),
    (_raw_safetensors({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8)), "malformed"),
    (_raw_safetensors({"t": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b""), "malformed"),
    (_raw_safetensors({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                       "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, bytes(3)), "gaps or overlaps"),
    (_raw_safetensors({"__metadata__": {"k": 1}}, b""), "map of strings"),
])
def test_malformed_safetensors_say_what_is_wrong(data, why):
    from edge_persrep.runtime.tensor_file import from_safetensors

    with pytest.raises(ValueError, match=why):
        from_safetensors(data)


def test_format1_bundle_loads_refuses_enrolment_until_upgraded_and_upgrade_keeps_every_object(bundle_copy, examples):
    from conftest import run_cli, write_format1_store

    from edge_persrep.runtime.finder import stored_photos

    finder = Finder.open(bundle_copy)
    finder.enroll("dog", list_images([examples / "dog"])[:3], "dog", negatives=list_images([examples / "negatives"]))
    store = finder.store
    m = _manifest(bundle_copy)  # the bundle as format 1 wrote it
    m.update(format_version=1, store="prototypes.npz")
    _write(bundle_copy, m)
    write_format1_store(store, bundle_copy / "prototypes.npz")
    (bundle_copy / "prototypes.safetensors").unlink()

    old = Finder.open(bundle_copy)  # still loads and answers
    (features,) = old.embed(stored_photos(store.objects["dog"])[:1])
    assert old.classify(features)[0].score == pytest.approx(finder.classify(features)[0].score, abs=1e-6)
    refused = run_cli("enroll", bundle_copy, examples / "heldout_others" / "cat_00.jpg", "--name", "cat", check=False)
    assert refused.returncode == 2 and f"run `edge-persrep upgrade {bundle_copy}`" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    out = run_cli("upgrade", bundle_copy)
    assert "upgraded to bundle format 2" in out.stdout
    files = sorted(p.name for p in bundle_copy.iterdir() if p.suffix != ".lock")  # enrolment's lock files stay
    assert files == ["bundle.json", "model.onnx", "prototypes.safetensors", "scorer.onnx"]
    upgraded = Finder.open(bundle_copy)
    assert upgraded.bundle.manifest["format_version"] == 2
    (p,) = upgraded.store.objects.values()
    q = store.objects["dog"]
    assert (p.name, p.category, p.threshold, p.scoring, p.photos) == (q.name, q.category, q.threshold, q.scoring,
                                                                      q.photos)
    np.testing.assert_array_equal(p.box_features, q.box_features)
    assert "already bundle format 2" in run_cli("upgrade", bundle_copy).stdout
    run_cli("enroll", bundle_copy, examples / "heldout_others" / "cat_00.jpg", "--name", "cat")


def test_upgrade_that_fails_before_the_manifest_leaves_a_loadable_format1_bundle(bundle_copy, monkeypatch):
    from conftest import write_format1_store

    from edge_persrep.runtime import bundle as bundle_module

    sha = Bundle.load(bundle_copy).model_sha256
    m = _manifest(bundle_copy)
    m.update(format_version=1, store="prototypes.npz")
    _write(bundle_copy, m)
    write_format1_store(_store(sha=sha), bundle_copy / "prototypes.npz")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "atomic_write_json", crash)
    with pytest.raises(OSError):
        bundle_module.upgrade(bundle_copy)
    assert list(Finder.open(bundle_copy).store.objects) == ["obj0"]


def test_tensorrt_caches_its_engines_and_computes_in_fp16_only_where_the_gate_allowed(bundle_copy, monkeypatch,
                                                                                       tmp_path):
    """No GPU here: the options each provider gets, and the bundle's say on fp16 (CPU runs it)."""
    from edge_persrep.runtime.bundle import provider_options

    monkeypatch.setenv("EDGE_PERSREP_TRT_CACHE", str(tmp_path / "trt"))
    chosen = dict(provider_options(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                                   fp16=True))
    trt = chosen["TensorrtExecutionProvider"]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_fp16_enable"] == "True" and chosen["CPUExecutionProvider"] == {}
    ((_, fp32_options),) = provider_options(["TensorrtExecutionProvider"])
    assert fp32_options["trt_fp16_enable"] == "False"

    assert Bundle.load(bundle_copy).fp16_tolerated is False  # no fp16 variant
    m = _manifest(bundle_copy)
    m["variants"] = {"fp16": {"format": "onnx", "path": "model.onnx", "sha256": m["files"]["model"]["sha256"],
                              "gate": {"passed": False}}}
    _write(bundle_copy, m)
    assert Bundle.load(bundle_copy).fp16_tolerated is False  # refused by the gate
    m["variants"]["fp16"]["gate"]["passed"] = True
    _write(bundle_copy, m)
    bundle = Bundle.load(bundle_copy)
    assert bundle.fp16_tolerated is True and bundle.provider == "CPUExecutionProvider"
