"""Edge variants: fp16 / int8 (gated) / ORT mobile / Core ML, and the adapter alone."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

torch = pytest.importorskip("torch")

from edge_persrep.export.precision import Gate, gate_verdict, measure, to_fp16, to_int8  # noqa: E402
from edge_persrep.pipeline import run_calibration  # noqa: E402
from edge_persrep.runtime import BundleError, Finder, list_images  # noqa: E402


@pytest.fixture(scope="module")
def variant_bundle(personalized_run, tmp_path_factory):
    """fp16 + ORT + Core ML (when coremltools is installed) from a run; int8 is tested separately."""
    out = tmp_path_factory.mktemp("variants") / "bundle"
    formats = "onnx,ort,coreml" if _has_coremltools() else "onnx,ort"
    run_cli("export", personalized_run, "--out", out, "--format", formats, "--precision", "fp32,fp16")
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


def test_int8_gate_accepts_good_calibration_and_refuses_bad(personalized_run, variant_bundle, tmp_path):
    calibration, checks = run_calibration(personalized_run, 320)
    gate = Gate(min_cosine=0.95, max_ap_drop=0.05)
    good = tmp_path / "good.onnx"
    to_int8(variant_bundle / "model.onnx", good, calibration[:16])
    good_check = measure(variant_bundle / "model.onnx", good, checks)
    assert gate_verdict(good_check, gate) == [], good_check
    bad = tmp_path / "bad.onnx"
    to_int8(variant_bundle / "model.onnx", bad, np.zeros_like(calibration[:16]))  # black frames: ranges collapse
    bad_check = measure(variant_bundle / "model.onnx", bad, checks)
    reasons = gate_verdict(bad_check, gate)
    assert reasons and "cosine" in reasons[0], bad_check


def test_export_refuses_int8_that_fails_the_gate_and_keeps_the_rest(personalized_run, tmp_path):
    out = tmp_path / "b"
    result = run_cli("export", personalized_run, "--out", out, "--precision", "fp32,int8", "--min-cosine", "0.99999",
                     check=False)
    assert result.returncode == 2 and "refused to ship int8" in result.stderr and "min embedding cosine" in result.stderr
    manifest = json.loads((out / "bundle.json").read_text())
    assert "int8" not in manifest.get("variants", {}) and "int8" in manifest["variants_rejected"]
    assert not (out / "model.int8.onnx").exists()
    forced = run_cli("export", personalized_run, "--out", out, "--precision", "fp32,int8", "--min-cosine", "0.99999",
                     "--force-int8")
    assert forced.returncode == 0
    entry = json.loads((out / "bundle.json").read_text())["variants"]["int8"]
    assert entry["gate"]["forced"] and not entry["gate"]["passed"]


def test_fp16_conversion_matches(variant_bundle, tmp_path, personalized_run):
    _, checks = run_calibration(personalized_run, 320)
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
    from edge_persrep.export.ort_lora import run_with_adapter
    from edge_persrep.runtime.bundle import make_session

    run_cli("export-adapter", personalized_run, "--out", tmp_path / "adapter")
    folder = tmp_path / "adapter"
    info = json.loads((folder / "adapter_info.json").read_text())
    assert info["onnxruntime_adapter"]["parameters"] == 34  # A and B of 17 LoRA'd convs
    assert (folder / "object.onnx_adapter").stat().st_size < 0.2 * (personalized_run / "bundle" / "model.onnx").stat().st_size
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
