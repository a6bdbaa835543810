"""The registry's entries, the real Lite0 weights, and loading user weights without pickle."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_persrep.runtime import EdgePersrepError, load_image  # noqa: E402
from edge_persrep.server_side.backbones import create_backbone, get_spec, list_backbones  # noqa: E402

DOG_CLASSES = range(151, 269)  # ImageNet-1k dog breeds


def test_registry_has_the_paper_and_edge_backbones():
    from edge_persrep.server_side.options import BACKBONES

    assert tuple(list_backbones()) == BACKBONES  # the torch-free list the CLI's help shows
    assert set(list_backbones()) >= {"efficientnet_lite0", "efficientnet_lite2", "dinov2_vits14", "dinov2_vitb14",
                                     "clip_vitb16", "mae_vitb16"}
    for name in list_backbones():
        spec = get_spec(name)
        assert spec.lora_targets and spec.preprocess.export_size and len(spec.preprocess.mean) == 3
    with pytest.raises(EdgePersrepError, match="unknown backbone"):
        get_spec("resnet_imaginary")


def test_lite0_real_weights_recognise_a_dog(examples):
    backbone = create_backbone("efficientnet_lite0")
    image = load_image(examples / "dog" / "00.jpg").resize((224, 224))
    x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        probs = backbone.model((x - 0.5) / 0.5).softmax(-1)[0]
    assert int(probs.argmax()) in DOG_CLASSES and float(probs.max()) > 0.5


@pytest.mark.parametrize("name,dim,grid", [("dinov2_vits14", 768, (16, 16, 384)),
                                           ("clip_vitb16", 1536, (14, 14, 768)),
                                           ("mae_vitb16", 1536, (14, 14, 768)),
                                           ("efficientnet_lite2", 1280, (7, 7, 1280))])
def test_random_init_backbones_give_documented_features(name, dim, grid):
    backbone = create_backbone(name, pretrained=name.startswith("efficientnet"))
    with torch.no_grad():
        g, patches = backbone(torch.randn(1, 3, 224, 224))
    assert g.shape == (1, dim) and tuple(patches.shape[1:]) == grid


def test_weights_file_roundtrip_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("dinov2_vits14", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = create_backbone("dinov2_vits14", weights=path)
    for k, v in source.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def test_weights_file_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(EdgePersrepError, match="cannot read weights"):
        create_backbone("dinov2_vits14", weights=path)


def test_offline_hub_backbone_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgePersrepError, match="--weights"):
        create_backbone("dinov2_vits14", pretrained=True)
