"""Exported ONNX reproduces the torch model; the bundle manifest says what an app needs."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_persrep.export.bundle_writer import write_bundle  # noqa: E402
from edge_persrep.export.onnx_export import export_onnx  # noqa: E402
from edge_persrep.runtime import Bundle, load_image  # noqa: E402
from edge_persrep.runtime.images import resize_to_input  # noqa: E402
from edge_persrep.server_side.backbones import create_backbone  # noqa: E402
from edge_persrep.server_side.embedder import ImageEmbedder  # noqa: E402


def test_lite0_bundle_matches_torch_on_real_photos(pretrained_bundle, examples):
    manifest = json.loads((pretrained_bundle / "bundle.json").read_text())
    check = manifest["export_check"]
    assert check["min_cosine_embedding"] >= 0.9999 and check["min_cosine_patch_grid"] >= 0.9999
    bundle = Bundle.load(pretrained_bundle)
    photos = [load_image(p) for p in sorted((examples / "dog_heldout").glob("*.jpg"))]
    batch = np.stack([resize_to_input(p, bundle.input_size) for p in photos])
    embedding, grid = bundle.run(batch)
    wrapper = ImageEmbedder(create_backbone("efficientnet_lite0")).eval()
    with torch.no_grad():
        ref_e, ref_g = (t.numpy() for t in wrapper(torch.from_numpy(batch)))
    assert np.min(np.sum(embedding * ref_e, axis=1)) >= 0.9999
    norms = np.linalg.norm(ref_g, axis=-1) > 0
    assert np.min(np.sum(grid * ref_g, axis=-1)[norms]) >= 0.9999
    assert grid.shape[1:] == (10, 10, 1280) and manifest["input"]["size"] == 320


def test_manifest_records_how_the_bundle_was_made(pretrained_bundle):
    m = json.loads((pretrained_bundle / "bundle.json").read_text())
    assert m["backbone"]["name"] == "efficientnet_lite0"
    assert m["input"]["dtype"] == "uint8" and m["input"]["layout"] == "NHWC" and m["input"]["normalisation"]["in_graph"]
    assert len(m["files"]["model"]["sha256"]) == 64
    assert {"torch", "onnxruntime", "edge_persrep"} <= set(m["versions"])


@pytest.mark.parametrize("name,emb,grid", [("dinov2_vits14", (768,), (16, 16, 384)),
                                           ("clip_vitb16", (1536,), (14, 14, 768))])
def test_vit_export_has_no_resize_and_matches_torch(tmp_path, name, emb, grid):
    backbone = create_backbone(name, pretrained=False)
    check = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    result, emb_shape, grid_shape = export_onnx(backbone, tmp_path / "m.onnx", 224, check)
    assert result["min_cosine_embedding"] >= 0.9999 and result["min_cosine_patch_grid"] >= 0.9999
    assert tuple(emb_shape) == emb and tuple(grid_shape) == grid
    ops = {node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "Resize" not in ops  # position embeddings precomputed at the export size


def test_export_refuses_to_overwrite_a_foreign_directory(tmp_path, examples):
    from edge_persrep.runtime import EdgePersrepError

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(EdgePersrepError, match="--force"):
        write_bundle(create_backbone("efficientnet_lite0"), foreign, [], None)
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_frozen_same_padding_is_exact_and_leaves_no_shape_arithmetic(tmp_path):
    from edge_persrep.export.static_graph import StaticSamePadConv, freeze_same_padding

    backbone = create_backbone("efficientnet_lite0")
    frozen = freeze_same_padding(backbone, 320)
    assert any(isinstance(m, StaticSamePadConv) for m in frozen.modules())
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        for a, b in zip(backbone(x), frozen(x)):
            assert torch.equal(a, b)
    check = np.random.default_rng(0).integers(0, 256, (1, 320, 320, 3), dtype=np.uint8)
    export_onnx(backbone, tmp_path / "m.onnx", 320, check)
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    # dynamic 'same' padding left 17 Shape and 10 Ceil ops; only L2-normalisation's 2 Shape remain
    assert "Ceil" not in ops and ops.count("Shape") <= 2
