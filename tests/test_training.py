"""InfoNCE by hand, LoRA placement and merge, and that training moves the model the right way."""

import json
import math

import pytest

torch = pytest.importorskip("torch")

from edge_persrep.server_side.backbones import create_backbone  # noqa: E402
from edge_persrep.server_side.contrastive import PRESETS, TrainConfig, add_lora, info_nce  # noqa: E402


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    tau = 0.5
    # logits: [1, 0, -1] / 0.5 -> loss = -log(e^2 / (e^2 + e^0 + e^-2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert info_nce(a, p, n, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_averages_over_anchors_and_uses_all_negatives():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    p = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    n = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    per_anchor = [info_nce(a[i:i + 1], p[i:i + 1], n, 0.07) for i in range(4)]
    assert info_nce(a, p, n, 0.07).item() == pytest.approx(torch.stack(per_anchor).mean().item(), rel=1e-5)


def test_joint_info_nce_adds_the_other_objects_positives_as_negatives():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    n = torch.tensor([[-1.0, 0.0]])
    # two objects: anchor 0's logits [a0.p0, a0.n, a0.p1] = [1, -1, 0]; anchor 1's [1, 0, 0]
    expected = (-math.log(math.e / (math.e + math.exp(-1) + 1)) - math.log(math.e / (math.e + 1 + 1))) / 2
    assert info_nce(a, p, n, 1.0, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    # one object twice: nothing of its own counts against it, exactly the single-object loss
    assert info_nce(a, p, n, 1.0, torch.tensor([3, 3])).item() == pytest.approx(info_nce(a, p, n, 1.0).item())


def test_box_cells_are_the_cells_whose_centres_the_box_holds():
    from edge_persrep.server_side.contrastive import box_cells

    # 224 px on a 7x7 grid: cell centres at 16, 48, 80, 112, ...; x1 = 112 is exclusive
    cells = box_cells((0, 40, 112, 100), (224, 224), (7, 7))
    assert cells.nonzero()[0].tolist() == [1, 1, 1, 2, 2, 2] and cells.nonzero()[1].tolist() == [0, 1, 2] * 2
    tiny = box_cells((100, 100, 104, 104), (224, 224), (7, 7))  # holds no centre: the cell of its own
    assert tiny.sum() == 1 and tiny[3, 3]


def test_in_context_pooling_separates_the_object_from_its_surroundings():
    from edge_persrep.server_side.contrastive import pool_inside_and_outside

    grid = torch.zeros(1, 4, 4, 2)
    grid[..., 1] = 3.0  # surroundings point along y
    grid[0, 1:3, 1:3] = torch.tensor([2.0, 0.0])  # the object along x
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 1:3, 1:3] = True
    inside, outside = pool_inside_and_outside(grid, cells)
    assert inside.tolist() == [[1.0, 0.0]] and outside.tolist() == [[0.0, 1.0]]


def test_paper_preset_is_the_paper_recipe():
    c = PRESETS["paper"]
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lr, c.betas, c.tau, c.batch_size) == (
        16, 0.5, 0.3, 3e-4, (0.5, 0.999), 0.07, 16)
    assert c.steps == math.ceil(2 * 4500 / 16)


def test_lora_on_lite0_targets_and_merge_is_exact():
    backbone = create_backbone("efficientnet_lite0")
    peft_model = add_lora(backbone, TrainConfig(lora_alpha=16.0))
    names = [n for n, _ in backbone.model.named_modules() if n.endswith("lora_A")]
    assert any("conv_head" in n for n in names) and any("blocks.6.0.conv_pwl" in n for n in names)
    assert not any(n.startswith("blocks.3") or n.startswith("blocks.0") for n in names)
    for name, param in backbone.model.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
    with torch.no_grad():  # give LoRA a non-zero update (B starts at zero)
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    backbone.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        g_lora, grid_lora = backbone(x)
        backbone.model = peft_model.merge_and_unload()
        g_merged, grid_merged = backbone(x)
    assert torch.allclose(g_lora, g_merged, atol=1e-4)
    assert torch.allclose(grid_lora, grid_merged, atol=1e-4)
    assert not any("lora" in n for n, _ in backbone.model.named_modules())


def test_fast_dropout_is_dropout_in_distribution_and_gradient():
    from edge_persrep.server_side.contrastive import FastDropout

    torch.manual_seed(0)
    dropout = FastDropout(0.3).train()
    x = torch.full((16, 64, 32, 32), 2.0, requires_grad=True)  # 1M elements
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.003  # 0.7 +- 6 sigma at 1M draws
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.7))  # survivors scaled by 1 / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(1 / 0.7))
    # channels-last input: output in the same layout, same keep rate; eval: identity
    z = dropout(torch.ones(16, 64, 32, 32).contiguous(memory_format=torch.channels_last))
    assert z.is_contiguous(memory_format=torch.channels_last) and abs((z != 0).float().mean().item() - 0.7) < 0.003
    assert torch.equal(dropout.eval()(x), x)


def test_add_lora_uses_fast_dropout_everywhere():
    from edge_persrep.server_side.contrastive import FastDropout

    backbone = create_backbone("efficientnet_lite0")
    add_lora(backbone, TrainConfig())
    dropouts = [m for n, m in backbone.model.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(isinstance(m, FastDropout) and m.p == 0.3 for m in dropouts)


def test_training_changes_lora_and_lowers_the_loss(examples, tmp_path):
    from edge_persrep.runtime import list_images, load_image
    from edge_persrep.server_side.contrastive import train

    backbone = create_backbone("efficientnet_lite0")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    anchors = [load_image(p) for p in list_images([examples / "dog"])]
    negatives = list_images([examples / "negatives"])
    config = TrainConfig(triplets=30 * 8, epochs=1, batch_size=8, lora_alpha=16.0, cache_trunk=True, views=2)
    summary = train(backbone, anchors, anchors, negatives, config, tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["loss_last10_mean"] < summary["loss_first"]
    after = backbone.model.state_dict()
    assert set(after) == set(before)  # merged back into the plain timm model
    assert not torch.equal(after["conv_head.weight"], before["conv_head.weight"])
    assert torch.equal(after["blocks.2.0.conv_pw.weight"], before["blocks.2.0.conv_pw.weight"])  # frozen trunk
    assert all(v.is_contiguous() for v in after.values())  # trained channels-last, handed back as torch's default


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_training_learns_and_records_its_precision(examples, tmp_path):
    from edge_persrep.runtime import list_images, load_image
    from edge_persrep.server_side.contrastive import train

    backbone = create_backbone("efficientnet_lite0")
    before = backbone.model.conv_head.weight.detach().clone()
    anchors = [load_image(p) for p in list_images([examples / "dog"])]
    config = TrainConfig(triplets=30 * 8, epochs=1, batch_size=8, lora_alpha=16.0, cache_trunk=True, views=2,
                         precision="bf16")
    summary = train(backbone, anchors, anchors, list_images([examples / "negatives"]), config, tmp_path)
    assert summary["config"]["precision"] == "bf16" and math.isfinite(summary["loss_last"])
    assert summary["loss_last10_mean"] < summary["loss_first"]
    merged = backbone.model.conv_head.weight
    assert merged.dtype == torch.float32 and not torch.equal(merged, before)  # fp32 weights, moved


def test_bf16_is_refused_before_any_work_on_a_cpu_without_it(examples, tmp_path, monkeypatch):
    from edge_persrep.pipeline import PersonalizeRequest
    from edge_persrep.runtime import EdgePersrepError

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    request = PersonalizeRequest([examples / "dog"], "dog", "dog", tmp_path / "run", negatives=[examples / "negatives"],
                                 device="cpu", train_precision="bf16")
    with pytest.raises(EdgePersrepError, match="no native bf16"):
        request.plan()
    assert not (tmp_path / "run").exists()


def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it(examples, tmp_path, monkeypatch):
    """The default (`auto`) trains bf16 where the CPU has native bf16, fp32 on other CPUs and on
    GPUs; the run records what was chosen; the environment variable pins it (as the tests do)."""
    from edge_persrep.pipeline import PersonalizeRequest
    from edge_persrep.runtime import EdgePersrepError
    from edge_persrep.server_side.contrastive import AUTO_PRECISION_ENV, resolve_precision

    monkeypatch.delenv(AUTO_PRECISION_ENV)
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("auto", "cuda") == "fp32"  # not measured on a GPU yet
        request = PersonalizeRequest([examples / "dog"], "dog", "dog", tmp_path / "run",
                                     negatives=[examples / "negatives"], device="cpu")
        assert request.plan().train_config.precision == expected  # what run.json will record
        # the paper preset runs its frozen trunk every step, in fp32 either way: bf16 gains nothing there
        assert resolve_precision("auto", "cpu", cache_trunk=False) == "fp32"
        paper = PersonalizeRequest([examples / "dog"], "dog", "dog", tmp_path / "paper",
                                   negatives=[examples / "negatives"], device="cpu", preset="paper")
        assert paper.plan().train_config.precision == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp8")
    with pytest.raises(EdgePersrepError, match=f"{AUTO_PRECISION_ENV}=fp8: use fp32 or bf16"):
        resolve_precision("auto", "cpu")


def test_merge_scale_takes_the_trained_update_further_and_the_adapter_says_so(examples, tmp_path, monkeypatch):
    """The same training (seed, steps, threads) merged at scale 1 and at 2: the same LoRA weights,
    the saved alpha doubled, and the merged model's change from the pretrained one exactly doubled;
    the adapter folder alone rebuilds that merged model (bundle, adapter export and resume read it)."""
    from safetensors.torch import load_file

    from edge_persrep.runtime import list_images, load_image, threads
    from edge_persrep.server_side import contrastive

    monkeypatch.setattr(threads, "_threads", torch.get_num_threads())
    anchors = [load_image(p) for p in list_images([examples / "dog"])]
    negatives = list_images([examples / "negatives"])[:4]
    base = create_backbone("efficientnet_lite0").model.state_dict()
    merged = {}
    for scale in (1.0, 2.0):
        config = TrainConfig(triplets=4 * 4, epochs=1, batch_size=4, lora_alpha=16.0, cache_trunk=True, views=1,
                             merge_scale=scale)
        backbone = create_backbone("efficientnet_lite0")
        summary = contrastive.train(backbone, anchors, anchors, negatives, config, tmp_path / str(scale))
        merged[scale] = backbone.model.state_dict()
        assert summary["config"]["merge_scale"] == scale
        saved = json.loads((tmp_path / str(scale) / "adapter" / "adapter_config.json").read_text())
        assert saved["lora_alpha"] == 16.0 * scale
        rebuilt = create_backbone("efficientnet_lite0")
        contrastive.load_adapter(rebuilt, tmp_path / str(scale) / "adapter")
        assert all(torch.allclose(rebuilt.model.state_dict()[k], merged[scale][k], atol=1e-6) for k in base)
    weights = [load_file(tmp_path / s / "adapter" / "adapter_model.safetensors") for s in ("1.0", "2.0")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for key in ("conv_head.weight", "blocks.6.0.conv_pwl.weight"):
        once, twice = merged[1.0][key] - base[key], merged[2.0][key] - base[key]
        assert once.abs().max() > 0 and torch.allclose(twice, 2 * once, atol=1e-6)


def test_killed_training_resumes_to_the_same_weights(examples, tmp_path, monkeypatch):
    from edge_persrep.runtime import list_images, load_image, threads
    from edge_persrep.server_side import contrastive

    # the same weights at the same thread count: pinned, so that another process on the machine
    # cannot make one run give up a thread (runtime/threads.CoreShare) and sum in another order
    monkeypatch.setattr(threads, "_threads", torch.get_num_threads())
    anchors = [load_image(p) for p in list_images([examples / "dog"])]
    negatives = list_images([examples / "negatives"])[:4]
    config = TrainConfig(triplets=6 * 4, epochs=1, batch_size=4, lora_alpha=16.0, cache_trunk=True, views=1,
                         checkpoint_every=2)

    straight = create_backbone("efficientnet_lite0")
    contrastive.train(straight, anchors, anchors, negatives, config, tmp_path / "straight")

    calls = {"n": 0}
    real_loss = contrastive.info_nce

    def dies_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this point runs
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(contrastive, "info_nce", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        contrastive.train(create_backbone("efficientnet_lite0"), anchors, anchors, negatives, config,
                          tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "checkpoint.json").read_text())["current"] == "checkpoint-000004"
    monkeypatch.setattr(contrastive, "info_nce", real_loss)
    resumed = create_backbone("efficientnet_lite0")
    summary = contrastive.train(resumed, anchors, anchors, negatives, config, tmp_path / "resumed")
    assert summary["steps"] == 6 and not (tmp_path / "resumed" / "checkpoint.json").exists()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = json.loads((tmp_path / "resumed" / "loss.json").read_text())["loss"]
    assert losses == json.loads((tmp_path / "straight" / "loss.json").read_text())["loss"]


def test_checkpoint_keeps_the_fp16_gradient_scale(tmp_path):
    """A resumed fp16 run must not restart its loss scale at 65536 (it would skip steps on overflow)."""
    import random

    from edge_persrep.server_side.contrastive import Checkpoints

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.ones(1, 2)).sum() * float("inf")).backward()  # an overflow halves the scale
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 512.0
    Checkpoints(tmp_path, TrainConfig()).save(3, [1.0], model, optimizer, random.Random(0), scaler)

    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step, _ = Checkpoints(tmp_path, TrainConfig()).restore(torch.nn.Linear(2, 1), optimizer, random.Random(0), fresh)
    assert step == 3 and fresh.get_scale() == 512.0
