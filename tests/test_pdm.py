"""PDM, the zero-shot diffusion-feature baseline (eval/pdm.py), on the tiny random Stable Diffusion."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")
from conftest import run_cli  # noqa: E402

from edge_persrep.eval.pdm import DiffusionFeatures, PDMConfig, image_score, pdm_map  # noqa: E402
from edge_persrep.runtime import load_image  # noqa: E402
from edge_persrep.server_side.synth import sd_models  # noqa: E402


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return sd_models.build_random_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny")


def test_map_and_score_by_hand():
    appearance = np.zeros((2, 2, 2), np.float32)
    appearance[0, 0] = [1, 0]  # the reference's feature
    appearance[1, 1] = [0.6, 0.8]
    appearance[0, 1] = appearance[1, 0] = [0, 1]
    semantic = np.array([[3.0, 1.0], [1.0, 2.0]])  # scaled to [[1, 0], [0, 0.5]]
    m = pdm_map(appearance, semantic, bank=np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(m, [[1.0, 0.0], [0.0, 0.3]])
    assert image_score(m, PDMConfig(top=0.5, min_top=1)) == pytest.approx(0.65)  # mean of the top 2 of 4


def test_features_come_from_the_inverted_latent_and_the_attention_hooks(tiny_sd, examples):
    sd = sd_models.load_sd(tiny_sd)
    photo = load_image(sorted((examples / "dog").iterdir())[0])
    appearance, semantic = DiffusionFeatures(sd, PDMConfig(inversion_steps=3))(photo, "dog")
    h, w, c = appearance.shape
    assert semantic.shape == (h, w) and h == w and h > 1
    np.testing.assert_allclose(np.linalg.norm(appearance, axis=-1), 1.0, atol=1e-5)  # [Q, K] each unit, / sqrt 2
    assert np.all(semantic >= 0) and np.all(semantic <= 1)  # attention probabilities of the category's token
    uninverted, _ = DiffusionFeatures(sd, PDMConfig(inversion_steps=0))(photo, "dog")
    assert not np.allclose(appearance, uninverted, atol=1e-3)  # the inversion reaches the features
    other, _ = DiffusionFeatures(sd, PDMConfig(inversion_steps=3))(photo.rotate(90), "dog")
    assert not np.allclose(appearance, other, atol=1e-3)  # they describe the photo


@pytest.mark.slow  # a whole `eval` with PDM (~60 s); PDM's features are in the default run
def test_eval_reports_pdm_beside_the_backbone_and_says_the_model_is_random(tiny_sd, tmp_path):
    run_cli("make-dataset", "procedural", "--out", tmp_path / "data", "--objects", "4", "--seed", "1")
    out = run_cli("eval", "--dataset", tmp_path / "data", "--layout", "procedural", "--synth", "",
                  "--objects", "mug1", "--baseline", "pdm", "--sd-model", tiny_sd, "--out", tmp_path / "report")
    assert "random-weight test model" in out.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["results"]) == {"pretrained", "pdm"} and report["baselines"]["pdm"]["random_weights"]
    pdm = report["results"]["pdm"]["mug1"]
    assert pdm and all({"classification_ap", "detection_map50"} <= set(r) for r in pdm.values())
    assert all(0.0 <= r["classification_ap"] <= 1.0 for r in pdm.values())
    assert "RANDOM-WEIGHT" in (tmp_path / "report" / "index.html").read_text()
    refused = run_cli("eval", "--dataset", tmp_path / "data", "--layout", "procedural", "--synth", "",
                      "--baseline", "pdm", "--out", tmp_path / "r2", check=False)
    assert refused.returncode == 2 and "--baseline pdm needs --sd-model" in refused.stderr
