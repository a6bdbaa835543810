"""Edge variants: fp16 / int8 (gated) / ORT mobile / Core ML, and the adapter alone."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

torch = pytest.importorskip("torch")

from edge_persrep.export.precision import Gate, gate_verdict, measure, to_fp16, to_int8  # noqa: E402
from edge_persrep.pipeline import RunDir  # noqa: E402
from edge_persrep.runtime import BundleError, Finder, list_images  # noqa: E402


@pytest.fixture(scope="module")
def variant_bundle(personalized_run, tmp_path_factory):
    """fp16 + ORT + Core ML (when coremltools is installed) from a run; int8 is tested separately."""
    out = tmp_path_factory.mktemp("variants") / "bundle"
    formats = "onnx,ort,coreml" if _has_coremltools() else "onnx,ort"
    said = run_cli("export", personalized_run, "--out", out, "--format", formats, "--precision", "fp32,fp16")
    (out.parent / "export.stderr").write_text(said.stderr)
    return out


def _has_coremltools():
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


def test_variants_are_listed_checked_and_usable(variant_bundle, examples):
    manifest = json.loads((variant_bundle / "bundle.json").read_text())
    fp16 = manifest["variants"]["fp16"]
    assert fp16["gate"]["passed"] and fp16["check"]["min_cosine_embedding"] >= 0.999
    assert manifest["variants"]["ort"]["batch"] == 1 and manifest["variants"]["ort"]["mobile_usability"]
    held_out = list_images([examples / "dog_heldout"])
    for variant in (None, "fp16", "ort"):
        finder = Finder.open(variant_bundle, variant=variant)
        assert all(m.present for f in finder.embed(held_out) for m in finder.classify(f)), variant
    info = json.loads(run_cli("info", variant_bundle, "--json").stdout)
    assert {"fp16", "ort"} <= set(info["variants"])


def test_corrupt_variant_is_refused(variant_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(variant_bundle, copy)
    data = bytearray((copy / "model.fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.fp16.onnx").write_bytes(bytes(data))
    out = run_cli("info", copy, check=False)
    assert out.returncode == 2 and "model.fp16.onnx: checksum" in out.stderr
    with pytest.raises(BundleError, match="checksum"):
        Finder.open(copy, variant="fp16")
    with pytest.raises(BundleError, match="no variant 'int8'"):
        Finder.open(copy, variant="int8")


@pytest.mark.skipif(not _has_coremltools(), reason="coremltools not installed (pip install edge-persrep[export])")
def test_coreml_spec_has_image_input_named_outputs_and_manifest(variant_bundle):
    import coremltools as ct

    said = (variant_bundle.parent / "export.stderr").read_text()  # coremltools' import noise is filtered
    assert "Failed to load _MLModelProxy" not in said and "has not been tested with coremltools" not in said

    manifest = json.loads((variant_bundle / "bundle.json").read_text())
    assert manifest["variants"]["coreml"]["path"] == "model.mlpackage"
    spec = ct.utils.load_spec(str(variant_bundle / "model.mlpackage"))
    (image,) = spec.description.input
    assert image.name == "image" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (320, 320)
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert [o.name for o in spec.description.output] == ["embedding", "patch_grid"]
    meta = json.loads(spec.description.metadata.userDefined["edge_persrep_manifest"])
    assert meta["backbone"]["name"] == "efficientnet_lite0" and spec.description.metadata.author == "edge-persrep"


def test_int8_passes_the_shipped_gate_and_black_frame_calibration_does_not(personalized_run, variant_bundle, tmp_path):
    """The shipped gate (0.99 / 0.01 / grid 0.95), on every CPU: x86 without VNNI saturated the old
    int8 model to min cosine 0.72 (README, "int8"); the precision-mode session and fp32 stem fix it."""
    calibration, checks = RunDir(personalized_run).int8_calibration(320)
    good = tmp_path / "good.onnx"
    assert to_int8(variant_bundle / "model.onnx", good, calibration) == "minmax"
    good_check = measure(variant_bundle / "model.onnx", good, checks)
    assert gate_verdict(good_check, Gate()) == [], good_check
    assert good_check["max_norm_error"] < 1e-4  # pooling and normalisation stayed fp32: unit outputs
    bad = tmp_path / "bad.onnx"
    to_int8(variant_bundle / "model.onnx", bad, np.zeros_like(calibration[:16]))  # black frames: ranges collapse
    bad_check = measure(variant_bundle / "model.onnx", bad, checks)
    reasons = gate_verdict(bad_check, Gate())
    assert reasons and "cosine" in reasons[0], bad_check


def test_int8_keeps_the_stem_and_the_normalisation_in_fp32(variant_bundle, personalized_run, tmp_path):
    import onnx

    from edge_persrep.export.precision import FP32_LEADING_CONVS

    calibration, _ = RunDir(personalized_run).int8_calibration(320)
    to_int8(variant_bundle / "model.onnx", tmp_path / "q.onnx", calibration[:8])
    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    produced_by = {out: n for n in nodes for out in n.output}
    convs = [n for n in nodes if n.op_type == "Conv"]
    weight_is_quantized = [c.input[1] in produced_by and produced_by[c.input[1]].op_type == "DequantizeLinear"
                           for c in convs]
    assert weight_is_quantized[:FP32_LEADING_CONVS] == [False] * FP32_LEADING_CONVS
    assert all(weight_is_quantized[FP32_LEADING_CONVS:])
    quantized = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    for op in ("ReduceMean", "ReduceSum", "Sqrt", "Div"):  # pooling and normalisation compute in fp32
        tail = [n for n in nodes if n.op_type == op]
        assert tail and not any(out in quantized for n in tail for out in n.output), op


def test_int8_bundle_gives_fp32_decisions_through_finder_and_find(personalized_run, examples, tmp_path):
    out = tmp_path / "b"
    run_cli("export", personalized_run, "--out", out, "--precision", "fp32,int8")
    entry = json.loads((out / "bundle.json").read_text())["variants"]["int8"]
    assert entry["gate"]["passed"] and entry["session_config"]["session.x64quantprecision"] == "1"
    photos = list_images([examples / "dog_heldout", examples / "heldout_others", examples / "negatives"])
    fp32, int8 = Finder.open(out), Finder.open(out, variant="int8")
    a = [fp32.classify(f)[0] for f in fp32.embed(photos)]
    b = [int8.classify(f)[0] for f in int8.embed(photos)]
    assert a[0].present and a[1].present and b[0].present and b[1].present  # the dog's two held-out photos
    # the global score reads the gated embedding (min cosine >= 0.99): it moved <= 0.0134 (measured on
    # two 4-step models). Region scores are a max over ~60 windows of the patch grid (gated at mean
    # cosine >= 0.95, ~0.985 measured), so they move more: 0.021 and 0.030 measured; 0.04 allowed
    assert max(abs(x.global_score - y.global_score) for x, y in zip(a, b)) < 0.02
    assert max(abs(x.score - y.score) for x, y in zip(a, b)) < 0.04
    # a decision may flip only where fp32's score is within int8's error of the threshold
    threshold = fp32.store.objects["my_dog"].threshold
    clear = [i for i, m in enumerate(a) if abs(m.score - threshold) > 0.04]
    assert len(clear) >= len(a) // 2 and all(a[i].present == b[i].present for i in clear)  # 12 of 16 measured
    found = json.loads(run_cli("find", out, examples / "dog_heldout" / "03.jpg", "--json", "--variant", "int8").stdout)
    assert found["results"][0]["present"] and abs(found["results"][0]["score"] - a[0].score) < 0.04


def test_export_refuses_int8_that_fails_the_gate_and_keeps_the_rest(personalized_run, tmp_path):
    out = tmp_path / "b"
    result = run_cli("export", personalized_run, "--out", out, "--precision", "fp32,int8", "--min-cosine", "0.99999",
                     check=False)
    assert result.returncode == 2 and "refused to ship int8" in result.stderr
    assert "min embedding cosine" in result.stderr
    manifest = json.loads((out / "bundle.json").read_text())
    assert "int8" not in manifest.get("variants", {}) and "int8" in manifest["variants_rejected"]
    assert not (out / "model.int8.onnx").exists()
    forced = run_cli("export", personalized_run, "--out", out, "--precision", "fp32,int8", "--min-cosine", "0.99999",
                     "--force-int8")
    assert forced.returncode == 0
    entry = json.loads((out / "bundle.json").read_text())["variants"]["int8"]
    assert entry["gate"]["forced"] and not entry["gate"]["passed"]


def test_fp16_conversion_matches(variant_bundle, tmp_path, personalized_run):
    _, checks = RunDir(personalized_run).int8_calibration(320)
    to_fp16(variant_bundle / "model.onnx", tmp_path / "h.onnx")
    check = measure(variant_bundle / "model.onnx", tmp_path / "h.onnx", checks)
    assert check["min_cosine_embedding"] >= 0.999 and check["mean_cosine_patch_grid"] >= 0.999
    assert (tmp_path / "h.onnx").stat().st_size < 0.6 * (variant_bundle / "model.onnx").stat().st_size


def test_adapter_alone_reproduces_the_merged_model(personalized_run, tmp_path):
    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.contrastive import load_adapter

    run_cli("export-adapter", personalized_run, "--out", tmp_path / "adapter")
    info = json.loads((tmp_path / "adapter" / "adapter_info.json").read_text())
    assert info["base"]["backbone"] == "efficientnet_lite0" and len(info["base"]["weights_sha256"]) == 64
    size = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert size < 0.5 * (personalized_run / "bundle" / "model.onnx").stat().st_size
    a, b = create_backbone("efficientnet_lite0"), create_backbone("efficientnet_lite0")
    load_adapter(a, tmp_path / "adapter")
    load_adapter(b, personalized_run / "train" / "adapter")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])
    plain = create_backbone("efficientnet_lite0")
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], a(x)[0])


def test_onnxruntime_lora_adapter_switches_objects_on_one_base(personalized_run, tmp_path):
    """One base session: no adapter = the pretrained model; the object's adapter = its merged model."""
    from edge_persrep.runtime.adapters import run_with_adapter
    from edge_persrep.runtime.bundle import make_session

    run_cli("export-adapter", personalized_run, "--out", tmp_path / "adapter")
    folder = tmp_path / "adapter"
    info = json.loads((folder / "adapter_info.json").read_text())
    assert info["onnxruntime_adapter"]["parameters"] == 34  # A and B of 17 LoRA'd convs
    model_bytes = (personalized_run / "bundle" / "model.onnx").stat().st_size
    assert (folder / "object.onnx_adapter").stat().st_size < 0.2 * model_bytes
    pretrained = tmp_path / "pretrained"
    run_cli("export", "--backbone", "efficientnet_lite0", "--pretrained", "--out", pretrained)
    x = np.random.default_rng(0).integers(0, 256, (2, 320, 320, 3), dtype=np.uint8)
    session = make_session(folder / "lora_base.onnx", ["CPUExecutionProvider"])
    with_adapter = run_with_adapter(session, folder / "object.onnx_adapter", x)
    without = run_with_adapter(session, None, x)
    merged = make_session(personalized_run / "bundle" / "model.onnx", ["CPUExecutionProvider"]).run(None, {"image": x})
    plain = make_session(pretrained / "model.onnx", ["CPUExecutionProvider"]).run(None, {"image": x})
    assert np.min(np.sum(with_adapter[0] * merged[0], axis=1)) >= 0.9999
    assert np.min(np.sum(without[0] * plain[0], axis=1)) >= 0.9999
    # the adapter really changes the model (4 training steps: a small but real change) toward the merged one
    assert np.abs(with_adapter[0] - without[0]).max() > 1e-3
    assert np.min(np.sum(with_adapter[0] * merged[0], axis=1)) > np.max(np.sum(with_adapter[0] * plain[0], axis=1))


def test_the_runtime_serves_objects_through_their_adapters_as_their_merged_models_do(personalized_run, tmp_path,
                                                                                 examples):
    """PerObjectFinder: the object's adapter on the shared base session gives the merged bundle's
    scores and decisions; a tampered adapter is refused with the file named."""
    from edge_persrep.runtime import BundleError, Finder, list_images
    from edge_persrep.runtime.adapters import PerObjectFinder

    run_cli("export-adapter", personalized_run, "--out", tmp_path / "adapter")
    bundle = personalized_run / "bundle"
    per_object = PerObjectFinder.open([(bundle, tmp_path / "adapter")])
    merged = Finder.open(bundle)
    photos = list_images([examples / "dog_heldout", examples / "heldout_others"])
    decisions = []
    for photo in photos:
        (a,), (b,) = per_object.find(photo), merged.find(merged.embed([photo])[0])
        assert a.name == b.name == "my_dog" and a.present == b.present and a.box == b.box
        assert a.score == pytest.approx(b.score, abs=1e-4)
        decisions.append(a.present)
    assert any(decisions) and not all(decisions)  # both answers occur
    (tmp_path / "adapter" / "object.onnx_adapter").write_bytes(b"not an adapter")
    with pytest.raises(BundleError, match="object.onnx_adapter"):
        PerObjectFinder.open([(bundle, tmp_path / "adapter")])


def test_cosines_are_true_cosines_whatever_the_norms():
    from edge_persrep.export.onnx_export import cosines

    a = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.array([[6.0, 8.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert np.allclose(cosines(a, b), [1.0, 1.0, 0.0, 0.0])  # scaled copy, two zeros agree, zero vs not, orthogonal


def test_gate_names_each_failed_check():
    check = {"min_cosine_embedding": 0.995, "mean_cosine_patch_grid": 0.90, "max_norm_error": 0.0, "ap_drop": 0.0,
             "ap_fp32": 1.0, "ap": 1.0}
    assert gate_verdict(check, Gate()) == ["mean patch-grid cosine 0.9000 < 0.95"]
    assert gate_verdict({**check, "mean_cosine_patch_grid": 0.99}, Gate()) == []
    unnormed = {**check, "mean_cosine_patch_grid": 0.99, "max_norm_error": 0.5}
    assert "not unit vectors" in gate_verdict(unnormed, Gate())[0]
    assert gate_verdict(check, Gate.with_overrides(min_grid_cosine=0.8, min_cosine=None)) == []


def test_calibration_folder_on_a_run_is_refused_not_ignored(personalized_run, examples, tmp_path):
    out = run_cli("export", personalized_run, "--out", tmp_path / "b", "--precision", "fp32,int8",
                  "--calibration", examples / "negatives", check=False)
    assert out.returncode == 2 and "--calibration" in out.stderr and "--pretrained" in out.stderr
    assert not (tmp_path / "b").exists()
