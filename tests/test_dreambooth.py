"""DreamBooth synthesis, offline, on a tiny SD-1.5-shaped pipeline built from configs with the real
CLIP tokenizer: the loss on hand-made cases, LoRA training and reloading, sampling seeds, resume,
sharding, the filter on real photos, bad input before long work, and the whole CLI path."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from conftest import box_masks, run_cli  # noqa: E402

from edge_persrep.runtime import EdgePersrepError, list_images, load_image  # noqa: E402
from edge_persrep.server_side.synth import base, dreambooth, prompts, sampling, sd_models  # noqa: E402
from edge_persrep.server_side.synth.base import SynthRequest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    return sd_models.build_random_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", "tiny")


def _photos(examples):
    return [load_image(p) for p in list_images([examples / "dog"])]


def test_tokenizer_is_the_real_clip_vocabulary(tiny_sd):
    expected = [49406, 320, 1125, 539, 48136, 1929, 49407]  # "a photo of sks dog"
    assert sd_models.clip_tokenizer()("a photo of sks dog").input_ids == expected
    sd = sd_models.load_sd(tiny_sd)  # the saved folder loads through from_pretrained
    assert sd.tokenizer("a photo of sks dog").input_ids == expected
    assert sd.tokenizer.model_max_length == 77 and sd.resolution == 64


def test_loss_is_masked_on_background_and_adds_the_prior_term():
    pred = torch.zeros(2, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])  # instance: object left
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    loss, parts = dreambooth.dreambooth_loss(pred, target, instance_count=1, masks=mask, prior_weight=0.5)
    assert parts["instance"] == pytest.approx(1.0)  # only the object's two pixels (error 1 each)
    assert parts["prior"] == pytest.approx(4.0)  # class image: every pixel (error 2)
    assert loss.item() == pytest.approx(1.0 + 0.5 * 4.0)
    loss.backward()
    assert torch.all(pred.grad[0, 0, :, 1] == 0)  # background pixels get no gradient
    assert torch.all(pred.grad[0, 0, :, 0] != 0) and torch.all(pred.grad[1] != 0)
    _, unmasked = dreambooth.dreambooth_loss(pred.detach(), target, instance_count=1)
    assert unmasked["instance"] == pytest.approx((1 + 9 + 1 + 9) / 4)


def test_latent_mask_marks_the_cells_the_object_touches():
    mask = np.zeros((80, 64), bool)  # portrait photo: centre-cropped to 64x64 (rows 8..72)
    mask[8:40, 0:16] = True  # the object fills the top-left quarter of the crop's left half
    cells = dreambooth.latent_mask(mask, 64, 8)[0]
    assert cells[:4, :2].all() and cells.sum() == 8


def test_lora_dreambooth_changes_the_model_and_reloads_exactly(tiny_sd, examples, tmp_path):
    sd = sd_models.load_sd(tiny_sd)
    base_unet = sd_models.load_sd(tiny_sd).unet
    x, t = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([400])
    states = sd.encode_prompts(["a photo of sks dog"])
    config = dreambooth.DreamBoothConfig(steps=4, class_images=2)
    negatives = [load_image(p) for p in list_images([examples / "negatives"])][:2]
    summary = dreambooth.fine_tune(sd, _photos(examples), negatives, "dog", config, tmp_path / "db")
    assert summary["steps_run"] == 4 and (tmp_path / "db" / "pytorch_lora_weights.safetensors").is_file()
    lora_b = [p for n, p in sd.unet.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: training moved it
    with torch.no_grad():
        tuned, base_out = sd.unet(x, t, states).sample, base_unet(x, t, states).sample
    assert (tuned - base_out).abs().max() > 1e-6
    fresh = sd_models.load_sd(tiny_sd)  # a user's own diffusers pipeline loads the saved LoRA too
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer,
                                   unet=fresh.unet, scheduler=sampling.make_scheduler("pndm", fresh.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(tmp_path / "db")
    with torch.no_grad():
        assert torch.allclose(pipe.unet(x, t, states).sample, tuned, atol=1e-5)
    again = dreambooth.fine_tune(sd_models.load_sd(tiny_sd), _photos(examples), negatives, "dog", config,
                                 tmp_path / "db")  # finished: loaded, not retrained
    assert again == summary


def test_dreambooth_resumes_from_a_checkpoint_to_the_same_weights(tiny_sd, examples, tmp_path, monkeypatch):
    negatives = [load_image(p) for p in list_images([examples / "negatives"])][:2]
    config = dreambooth.DreamBoothConfig(steps=4, class_images=2, checkpoint_every=2)
    whole = sd_models.load_sd(tiny_sd)
    dreambooth.fine_tune(whole, _photos(examples), negatives, "dog", config, tmp_path / "whole")

    class Killed(Exception):
        pass

    original, calls = dreambooth.dreambooth_loss, []

    def dying_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # killed during step 3, after the step-2 checkpoint
            raise Killed()
        return original(*args, **kwargs)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(dreambooth, "dreambooth_loss", dying_loss)
    with pytest.raises(Killed):
        dreambooth.fine_tune(sd_models.load_sd(tiny_sd), _photos(examples), negatives, "dog", config, out)
    monkeypatch.setattr(dreambooth, "dreambooth_loss", original)
    assert (out / "checkpoint.json").is_file() and not (out / "dreambooth.json").exists()
    resumed = sd_models.load_sd(tiny_sd)
    summary = dreambooth.fine_tune(resumed, _photos(examples), negatives, "dog", config, out)
    assert summary["steps_run"] == 2  # started again at step 2
    reference = dict(whole.unet.named_parameters())
    lora = [(n, p) for n, p in resumed.unet.named_parameters() if "lora" in n]
    assert lora and all(torch.equal(p, reference[n]) for n, p in lora)
    assert not (out / "checkpoint.json").exists()


def test_masked_training_uses_the_masks(tiny_sd, examples, tmp_path):
    photos = _photos(examples)
    masks = []
    for photo in photos:
        m = np.zeros((photo.height, photo.width), bool)
        m[: photo.height // 2, : photo.width // 2] = True
        masks.append(m)
    config = dreambooth.DreamBoothConfig(steps=3, class_images=0, prior_weight=0.0)
    plain, masked = sd_models.load_sd(tiny_sd), sd_models.load_sd(tiny_sd)
    s1 = dreambooth.fine_tune(plain, photos, [], "dog", config, tmp_path / "plain")
    s2 = dreambooth.fine_tune(masked, photos, [], "dog", config, tmp_path / "masked", masks=masks)
    assert s2["masked"] and not s1["masked"]
    losses = [json.loads((tmp_path / d / "loss.json").read_text())["loss"] for d in ("plain", "masked")]
    assert losses[0][0][0] != losses[1][0][0]  # same seed, same draws: only the mask differs


def test_a_mask_covering_everything_trains_exactly_like_no_mask(tiny_sd, examples, tmp_path):
    """The masked path changes nothing but what the mask excludes: an all-object mask gives the
    unmasked run's losses and LoRA weights. (The converse, "a different background gives the same
    weights", does not hold: the UNet sees the whole noisy latent, so the background reaches the
    object's predictions through its receptive field; only the loss ignores it.)"""
    photos = _photos(examples)
    config = dreambooth.DreamBoothConfig(steps=3, class_images=0, prior_weight=0.0)
    plain, masked = sd_models.load_sd(tiny_sd), sd_models.load_sd(tiny_sd)
    dreambooth.fine_tune(plain, photos, [], "dog", config, tmp_path / "plain")
    everything = [np.ones((p.height, p.width), bool) for p in photos]
    dreambooth.fine_tune(masked, photos, [], "dog", config, tmp_path / "masked", masks=everything)
    losses = [json.loads((tmp_path / d / "loss.json").read_text())["loss"] for d in ("plain", "masked")]
    assert losses[0] == losses[1]
    weights = [{n: p for n, p in sd.unet.named_parameters() if "lora" in n} for sd in (plain, masked)]
    assert weights[0] and all(torch.equal(p, weights[1][n]) for n, p in weights[0].items())


def _as_stored(image):
    """An image as the sampler stores it (JPEG quality 92), decoded."""
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return Image.open(buffer)


def _same_picture(a, b):
    diff = np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float))
    return diff.mean() < 0.1 and diff.max() <= 2


def test_sampling_reproduces_per_image_seeds_and_resumes(tiny_sd, tmp_path):
    sd = sd_models.load_sd(tiny_sd)
    sampler = sampling.Sampler(sd, sampling.SamplingConfig(steps=3, batch_size=3))
    request = SynthRequest(photos=[], category="dog", out_dir=tmp_path / "a", count=5, seed=7)
    result = sampling.sample_set(sampler, request, "negatives", lambda i: f"a photo of a dog, view {i}", {})
    manifest = json.loads(result.manifest.read_text())
    assert [e["file"] for e in manifest["images"]] == [f"negatives/{i:05d}.jpg" for i in range(5)]
    assert all({"prompt", "generator_seed", "cfg"} <= set(e) for e in manifest["images"])
    assert manifest["images"][2]["prompt"] == "a photo of a dog, view 2" and manifest["scheduler"] == "pndm"
    # the same image alone, in another batch layout: the same picture (batched float maths on a CPU
    # may differ in the last bits, so allow a pixel level after JPEG)
    (alone,) = sampler([manifest["images"][4]["prompt"]], [manifest["images"][4]["generator_seed"]])
    assert _same_picture(_as_stored(alone), Image.open(result.positives[4]))
    (other,) = sampler([manifest["images"][4]["prompt"]], [manifest["images"][3]["generator_seed"]])
    assert not _same_picture(_as_stored(other), Image.open(result.positives[4]))  # another seed is another picture
    kept = result.positives[0].stat().st_mtime_ns
    lost = Image.open(result.positives[3]).convert("RGB")
    result.positives[3].unlink()
    calls = []
    counting = sampling.Sampler(sd, sampling.SamplingConfig(steps=3, batch_size=3))
    original = counting.pipe.__call__
    counting.pipe = lambda **kw: calls.append(len(kw["prompt"])) or original(**kw)
    again = sampling.sample_set(counting, request, "negatives", lambda i: f"a photo of a dog, view {i}", {})
    assert calls == [1] and _same_picture(Image.open(result.positives[3]), lost)
    assert result.positives[0].stat().st_mtime_ns == kept and len(again.positives) == 5


def test_shards_neither_overlap_nor_leave_gaps(tmp_path):
    for world in range(1, 6):
        for count in range(0, 24):
            shards = [list(base.shard_indices(count, r, world)) for r in range(world)]
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(count))
    request = SynthRequest(photos=[], category="dog", out_dir=tmp_path, count=7, seed=1)

    def make_batch(indices):
        return [(Image.new("RGB", (8, 8), (i * 30, 0, 0)), {"prompt": f"p{i}"}) for i in indices]

    for rank in range(3):
        base.run_generator(request, "sd", make_batch=make_batch, batch_size=2, subdir="negatives",
                           manifest_name="negatives.json", shard=(rank, 3))
    merged = base.merge_shards(request, "sd", 3, subdir="negatives", manifest_name="negatives.json")
    entries = json.loads(merged.manifest.read_text())["images"]
    assert [e["prompt"] for e in entries] == [f"p{i}" for i in range(7)]
    assert not list(tmp_path.glob("negatives.part*"))
    (tmp_path / "negatives" / "00004.jpg").unlink()
    with pytest.raises(EdgePersrepError, match="1 image"):
        base.merge_shards(request, "sd", 3, subdir="negatives", manifest_name="negatives.json")


def test_prompt_bank_has_a_hundred_scenes_per_category(tmp_path):
    categories = [c for members in prompts.GROUPS.values() for c in members] + ["widget", "dogs"]
    for category in categories:
        bank = prompts.bank(f"sks {category}", category)
        assert len(set(bank)) >= prompts.MIN_BANK, category
        assert all(f"sks {category}" in p for p in bank)
        first = bank[:prompts.MIN_BANK]
        contexts = prompts.contexts_for(category)
        assert all(any(c in p for p in first) for c in contexts) and len(contexts) >= 40  # all visited early
    assert prompts.group_of("dogs") == "animal"
    f = tmp_path / "prompts.txt"
    f.write_text("# mine\na photo of {subject} on the moon\n\n{subject} in a boat  # comment\n")
    assert prompts.read_prompt_file(f, "sks dog") == ["a photo of sks dog on the moon", "sks dog in a boat"]
    f.write_text("a photo on the moon\n")
    with pytest.raises(EdgePersrepError, match=r"prompts.txt:1: .*\{subject\}"):
        prompts.read_prompt_file(f, "sks dog")


def test_sd_folder_checks_name_what_is_missing(tiny_sd, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(EdgePersrepError, match=r"missing unet/diffusion_pytorch_model.safetensors, tokenizer/"):
        sd_models.resolve_sd_model(str(broken))
    with pytest.raises(EdgePersrepError, match="no model_index.json"):
        sd_models.resolve_sd_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(EdgePersrepError, match="not in the local Hugging Face cache.*--sd-model DIR"):
        sd_models.resolve_sd_model(sd_models.DEFAULT_SD_MODEL)


def test_filter_keeps_the_same_object_and_drops_look_alikes(examples):
    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.embedder import Embedder
    from edge_persrep.server_side.synth.filtering import default_threshold, filter_generated, score_key

    same = list_images([examples / "dog_heldout"])
    others = list_images([examples / "negatives", examples / "heldout_others"])
    report = filter_generated(Embedder(create_backbone("efficientnet_lite0")), _photos(examples), None,
                              same + others, default_threshold("dog"))
    assert default_threshold("dog") == 0.55 and default_threshold("mug") == 0.6
    assert min(report.scores[score_key(p)] for p in same) > max(report.scores[score_key(p)] for p in others)
    assert set(same) <= set(report.kept) and report.dropped >= len(others) - 1


def _box_masks(examples, tmp_path):
    return box_masks(examples / "dog", tmp_path / "masks", parts=6)


TINY = ["--positives", "6", "--synth-negatives", "6", "--class-images", "3", "--db-steps", "4",
        "--sample-steps", "3", "--sample-batch", "3", "--min-similarity", "-1"]


@pytest.mark.parametrize("method", ["bad-masks", "no-masks", "fp16", "broken-sd", "no-photos", "cuda"])
def test_bad_input_fails_before_any_long_work(method, tiny_sd, examples, tmp_path):
    photos, synth_method, extra = examples / "dog", "dreambooth", []
    sd = tiny_sd
    if method == "bad-masks":
        masks = _box_masks(examples, tmp_path)
        Image.new("L", (10, 10), 255).save(next(masks.iterdir()))
        synth_method, extra = "masked-dreambooth", ["--masks", masks]
        expected = "masks must match their photos"
    elif method == "no-masks":
        synth_method, expected = "combined", "needs --masks DIR"
    elif method == "fp16":
        extra, expected = ["--precision", "fp16"], "fp16 needs a CUDA GPU"
    elif method == "broken-sd":
        sd = tmp_path / "sd"
        shutil.copytree(tiny_sd, sd)
        shutil.rmtree(sd / "vae")
        expected = "missing vae/"
    elif method == "no-photos":
        photos = tmp_path / "empty"
        photos.mkdir()
        expected = "directory has no images"
    else:
        extra, expected = ["--device", "cuda"], "no CUDA GPU"
    out = tmp_path / "run"
    result = run_cli("personalize", photos, "--name", "d", "--category", "dog", "--out", out, "--synth", synth_method,
                     "--sd-model", sd, *TINY, *extra, check=False)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (out / "synth").exists()  # nothing was generated


@pytest.mark.slow  # DreamBooth through `personalize` (~75 s); its stages are tested one by one by default
def test_dreambooth_personalize_end_to_end(tiny_sd, examples, tmp_path):
    """fine-tune -> sample -> filter -> train -> export -> find, on CPU against the tiny pipeline."""
    run = tmp_path / "run"
    run_cli("--offline", "personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", run,
            "--synth", "combined", "--masks", _box_masks(examples, tmp_path), "--scenes", "3",
            "--sd-model", tiny_sd, "--steps", "3", *TINY)
    summary = json.loads((run / "synth" / "synth.json").read_text())
    assert summary["method"] == "combined" and summary["dreambooth"]["masked"]
    assert summary["generated_positives"] == 6 and summary["filter"]["kept"] == 6
    assert len(summary["training_positives"]) == 12  # 6 DreamBooth + 6 Cut-and-Paste on generated scenes
    assert len(summary["training_negatives"]) == 6
    for name, count in (("positives", 6), ("negatives", 6), ("backgrounds", 3)):
        manifest = json.loads((run / "synth" / f"{name}.json").read_text())
        assert len(manifest["images"]) == count and all("generator_seed" in e for e in manifest["images"])
    assert "sks dog" in json.loads((run / "synth" / "positives.json").read_text())["images"][0]["prompt"]
    training = json.loads((run / "train" / "summary.json").read_text())
    assert training["positives"] == 12 and training["negatives"] == 6  # generated negatives used
    record = json.loads((run / "run.json").read_text())
    assert record["diffusion"]["dreambooth"]["steps"] == 4 and record["synth"] == "combined"
    found = run_cli("find", run / "bundle", examples / "dog_heldout", "--json")
    assert all(json.loads(line)["results"][0]["name"] == "my_dog" for line in found.stdout.splitlines())
    # the synth command alone, then personalize from its output
    data = tmp_path / "data"
    run_cli("--offline", "synth", examples / "dog", "--category", "dog", "--out", data, "--sd-model", tiny_sd, *TINY)
    assert json.loads((data / "synth.json").read_text())["filter"]["dropped"] == 0
    run_cli("personalize", examples / "dog", "--name", "d2", "--category", "dog", "--out", tmp_path / "run2",
            "--synth", "dreambooth", "--synth-data", data, "--steps", "2")
    assert not (tmp_path / "run2" / "synth" / "positives").exists()


@pytest.mark.slow  # two generating processes (~40 s); one process's resumable generation is in the default run
def test_two_processes_make_exactly_the_images_one_makes(tiny_sd, examples, tmp_path):
    """`synth` sharded over 2 processes (torchrun, gloo on CPU; one per GPU on a GPU machine): the
    same files, the same pictures, one joined manifest, no part manifests left."""
    import subprocess
    import sys

    args = ["--offline", "synth", examples / "dog", "--category", "dog", "--sd-model", tiny_sd, *TINY,
            "--positives", "7", "--synth-negatives", "5", "--sample-batch", "2"]
    run_cli(*args, "--out", tmp_path / "one")
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "edge_persrep.cli", *map(str, args), "--out", str(tmp_path / "two")],
                             capture_output=True, text=True)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    for kind, count in (("positives", 7), ("negatives", 5)):
        files = sorted(p.name for p in (tmp_path / "two" / kind).iterdir())
        assert files == [f"{i:05d}.jpg" for i in range(count)]
        for name in files:
            assert _same_picture(Image.open(tmp_path / "one" / kind / name), Image.open(tmp_path / "two" / kind / name))
        one = json.loads((tmp_path / "one" / f"{kind}.json").read_text())["images"]
        two = json.loads((tmp_path / "two" / f"{kind}.json").read_text())["images"]
        assert [(e["file"], e["generator_seed"], e["prompt"]) for e in one] == \
               [(e["file"], e["generator_seed"], e["prompt"]) for e in two]
    assert not list((tmp_path / "two").glob("*.part*"))


@pytest.mark.gpu
def test_cuda_lora_dreambooth_in_fp16_and_sampling(tiny_sd, examples, tmp_path):
    """The CUDA path: fp16 frozen weights, fp32 LoRA, autocast + grad scaler, gradient checkpointing."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    sd = sd_models.load_sd(tiny_sd, "cuda", dreambooth.weight_dtype("auto", "cuda"))
    assert sd.unet.dtype == torch.float16
    config = dreambooth.DreamBoothConfig(steps=4, class_images=2, train_text_encoder=True)
    summary = dreambooth.fine_tune(sd, _photos(examples), _photos(examples)[:2], "dog", config, tmp_path / "db", "cuda")
    assert summary["precision"] == "float16" and summary["peak_gpu_memory_gb"] is not None
    assert np.isfinite(summary["loss_last10_mean"]) and sd.unet.dtype == torch.float16
    images = sampling.Sampler(sd, sampling.SamplingConfig(steps=3, batch_size=2))(["a photo of sks dog"] * 2, [1, 2])
    assert len(images) == 2 and images[0].size == (64, 64)


@pytest.mark.parametrize("mode,text_encoder", [("full", False), ("lora", True)])
def test_full_and_text_encoder_training_save_and_reload(mode, text_encoder, tiny_sd, examples, tmp_path):
    sd = sd_models.load_sd(tiny_sd)
    before = {n: p.clone() for n, p in sd.unet.named_parameters()}
    text_before = sd.encode_prompts(["a photo of sks dog"])
    config = dreambooth.DreamBoothConfig(mode=mode, steps=3, class_images=2, train_text_encoder=text_encoder,
                                         lr=1e-3 if mode == "full" else None,
                                         gradient_checkpointing=text_encoder)  # CUDA's default, on a CPU
    dreambooth.fine_tune(sd, _photos(examples), _photos(examples)[:2], "dog", config, tmp_path / "db")
    if mode == "full":
        assert (tmp_path / "db" / "unet" / "config.json").is_file()
        assert any(not torch.equal(p, before[n]) for n, p in sd.unet.named_parameters())
    else:
        assert not torch.allclose(sd.encode_prompts(["a photo of sks dog"]), text_before)
        # with gradient checkpointing, every LoRA inside a checkpointed block still got gradients
        moved = [n for n, p in sd.unet.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
        assert moved and len(moved) == sum("lora_B" in n for n, _ in sd.unet.named_parameters())
        assert all(p.abs().sum() > 0 for n, p in sd.text_encoder.named_parameters() if "lora_B" in n)
    reloaded = sd_models.load_sd(tiny_sd)
    dreambooth.load_tuned(reloaded, tmp_path / "db", config)
    x, t = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([300])
    with torch.no_grad():
        a = sd.unet(x, t, sd.encode_prompts(["a photo of sks dog"])).sample
        b = reloaded.unet(x, t, reloaded.encode_prompts(["a photo of sks dog"])).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_patch_quality_oracle_and_patch_mode(examples):
    """A photo scored against all of its own patches has every patch quality 1; the patch score is
    a quantile by hand; mode="patch" keeps by the patch score."""
    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.embedder import Embedder
    from edge_persrep.server_side.synth.filtering import (
        RealObject,
        filter_generated,
        locate_object,
        patch_qualities,
        patch_score,
        score_key,
    )

    assert patch_score(np.array([0.5, 0.1, 0.4, 0.2, 0.3]), 0.25) == pytest.approx(0.2)
    assert patch_score(np.zeros(0)) == 0.0
    embed = Embedder(create_backbone("efficientnet_lite0"))
    (f,) = embed(_photos(examples)[:1])
    grid = f.grid.reshape(-1, f.grid.shape[2])
    own = RealObject([], grid[:3], grid)  # targets: any of its patches, so something is located
    mask, _ = locate_object(f, own)
    qualities = patch_qualities(f, own, mask)
    assert len(qualities) > 0 and np.allclose(qualities, 1.0, atol=1e-5)
    candidates = list_images([examples / "dog_heldout", examples / "heldout_others"])
    report = filter_generated(embed, _photos(examples), None, candidates, 0.5, mode="patch")
    assert report.mode == "patch" and set(report.patch_scores) == set(report.scores)
    assert report.chosen is report.patch_scores  # what the threshold and the all-dropped error use
    assert report.kept == [p for p in candidates if report.patch_scores[score_key(p)] >= 0.5]
    with pytest.raises(EdgePersrepError, match="unknown filter mode"):
        filter_generated(embed, _photos(examples), None, candidates, 0.5, mode="patches")


def test_ip_adapter_makes_positives_steered_by_the_photos_without_fine_tuning(tiny_sd, examples, tmp_path):
    """--synth ip-adapter: no DreamBooth, each batch conditioned on a reference photo; the photo
    must reach the images (scale 0, the prompt alone, gives other images from the same noise)."""
    from edge_persrep.server_side.synth.ip_adapter import IPAdapterConfig, build_random_ip_adapter

    adapter = build_random_ip_adapter(tmp_path / "ipa", sd_models.load_sd(tiny_sd).unet)
    data = tmp_path / "data"
    run_cli("--offline", "synth", examples / "dog", "--category", "dog", "--out", data, "--sd-model", tiny_sd,
            "--method", "ip-adapter", "--ip-adapter", adapter, *TINY)
    summary = json.loads((data / "synth.json").read_text())
    assert summary["method"] == "ip-adapter" and "dreambooth" not in summary and not (data / "dreambooth").exists()
    assert summary["ip_adapter"]["images"] == 6 and summary["ip_adapter"]["images_per_s"] > 0
    assert summary["ip_adapter"]["scale"] == 0.6 and summary["generated_positives"] == 6
    manifest = json.loads((data / "positives.json").read_text())["images"]
    assert [e["reference_photo"] for e in manifest] == [0, 0, 0, 1, 1, 1]  # batches of 3, photos in turn
    assert "sks" not in manifest[0]["prompt"] and "dog" in manifest[0]["prompt"]
    assert len(summary["training_negatives"]) == 6

    from edge_persrep.server_side.synth import SynthRequest, generate
    from edge_persrep.server_side.synth.personalized_generation import DiffusionOptions
    from edge_persrep.server_side.synth.sampling import SamplingConfig

    def positives(scale, out):
        options = DiffusionOptions(sd_model=str(tiny_sd), negatives=1, min_similarity=-1,
                                   sampling=SamplingConfig(steps=2, batch_size=2),
                                   ip_adapter=IPAdapterConfig(source=str(adapter), scale=scale))
        result = generate("ip-adapter", SynthRequest(sorted((examples / "dog").iterdir()), "dog", out, count=2,
                                                     diffusion=options))
        return [np.asarray(Image.open(p), float) for p in result.positives]

    steered, unsteered = positives(0.6, tmp_path / "a"), positives(0.0, tmp_path / "b")
    assert all(np.abs(a - b).mean() > 1.0 for a, b in zip(steered, unsteered))


# --- PatchDPO-style refinement (--refine patchdpo) ------------------------------------------------

def test_patch_weighted_loss_and_weights_by_hand():
    from edge_persrep.server_side.synth.patchdpo import normalise, patch_weighted_loss

    pred = torch.zeros(2, 4, 2, 2, requires_grad=True)
    target = torch.ones(2, 4, 2, 2)
    weights = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.5, 0.5], [0.0, 1.0]]]])
    loss, parts = patch_weighted_loss(pred, target, weights)
    assert loss.item() == pytest.approx((1 + 0.5 + 0.5 + 1) * 4 / 32)  # mean of weight x squared error
    assert parts["photos"] == pytest.approx(4 / 16) and parts["samples"] == pytest.approx(2 * 4 / 16)
    loss.backward()
    assert (pred.grad[0, :, 0, 1] == 0).all() and (pred.grad[0, :, 0, 0] != 0).all()  # weight 0: no pull
    (w,) = normalise([np.array([[np.nan, 0.2], [0.6, 1.0]], np.float32)], low=0, high=100)
    np.testing.assert_allclose(w, [[1.0, 0.0], [0.5, 1.0]])  # off the object: 1; 0.2..1.0 -> 0..1


@pytest.fixture(scope="module")
def tuned_lora(tiny_sd, examples, tmp_path_factory):
    config = dreambooth.DreamBoothConfig(steps=2, class_images=0, prior_weight=0.0, checkpoint_every=2)
    out = tmp_path_factory.mktemp("db") / "dreambooth"
    dreambooth.fine_tune(sd_models.load_sd(tiny_sd), _photos(examples), [], "dog", config, out)
    return out, config


def _refine(tiny_sd, examples, tuned_lora, out, steps=4):
    from edge_persrep.server_side.backbones import create_backbone
    from edge_persrep.server_side.embedder import Embedder
    from edge_persrep.server_side.synth import patchdpo

    tuned_dir, db = tuned_lora
    sd = sd_models.load_sd(tiny_sd)
    dreambooth.load_tuned(sd, tuned_dir, db)
    samples = list_images([examples / "dog_heldout", examples / "heldout_others"])  # stand-ins for generations

    def sample(folder, count):
        return samples[:count], ["a photo of sks dog"] * count

    summary = patchdpo.refine(sd, _photos(examples), None, "dog", db, patchdpo.PatchDPOConfig(samples=4, steps=steps),
                              tuned_dir, out, "cpu", sample, Embedder(create_backbone("efficientnet_lite0")))
    return sd, summary


def test_patchdpo_refines_the_lora_with_the_weighted_loss_and_resumes(tiny_sd, examples, tuned_lora, tmp_path,
                                                                      monkeypatch):
    from edge_persrep.server_side.synth import patchdpo

    tuned = sd_models.load_sd(tiny_sd)
    dreambooth.load_tuned(tuned, *tuned_lora)
    before = {n: p.clone() for n, p in tuned.unet.named_parameters() if "lora" in n}
    whole, summary = _refine(tiny_sd, examples, tuned_lora, tmp_path / "whole")
    after = {n: p for n, p in whole.unet.named_parameters() if "lora" in n}
    assert after.keys() == before.keys() and any(not torch.equal(after[n], before[n]) for n in before)
    assert summary["samples"] == 4 and summary["steps_run"] == 4 and (tmp_path / "whole" / "patchdpo.json").is_file()
    assert 0.0 < summary["mean_photo_weight"] < 1.0
    losses = json.loads((tmp_path / "whole" / "loss.json").read_text())["loss"]
    assert any(row[1] > 0 for row in losses)  # the photos are learned where the samples fall short

    class Killed(Exception):
        pass

    original, calls = patchdpo.patch_weighted_loss, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 3:  # during step 3, after the step-2 checkpoint
            raise Killed()
        return original(*args)

    monkeypatch.setattr(patchdpo, "patch_weighted_loss", dying)
    with pytest.raises(Killed):
        _refine(tiny_sd, examples, tuned_lora, tmp_path / "interrupted")
    monkeypatch.setattr(patchdpo, "patch_weighted_loss", original)
    resumed, summary = _refine(tiny_sd, examples, tuned_lora, tmp_path / "interrupted")
    assert summary["steps_run"] == 2
    assert all(torch.equal(p, after[n]) for n, p in resumed.unet.named_parameters() if "lora" in n)

    # the weights reach the loss: with no object found in any sample, every sample cell weighs 1
    # and the photos 0, so the photos' part of the loss is exactly 0
    monkeypatch.setattr(patchdpo, "quality_map", lambda features, real, mask: np.full(features.grid.shape[:2], np.nan))
    _refine(tiny_sd, examples, tuned_lora, tmp_path / "no-object", steps=2)
    losses = json.loads((tmp_path / "no-object" / "loss.json").read_text())["loss"]
    assert all(row[1] == 0.0 and row[2] > 0 for row in losses)


@pytest.mark.slow  # PatchDPO through the CLI (~25 s); the weighted loss and its resume are in the default run
def test_refine_patchdpo_from_the_cli(tiny_sd, examples, tmp_path):
    data = tmp_path / "data"
    run_cli("--offline", "synth", examples / "dog", "--category", "dog", "--out", data, "--sd-model", tiny_sd, *TINY,
            "--refine", "patchdpo", "--refine-steps", "2", "--refine-samples", "3")
    summary = json.loads((data / "synth.json").read_text())["dreambooth"]["patchdpo"]
    assert summary["samples"] == 3 and summary["steps_run"] == 2
    assert len(json.loads((data / "patchdpo" / "samples.json").read_text())["images"]) == 3
    refined = (data / "patchdpo" / "pytorch_lora_weights.safetensors").read_bytes()
    assert refined != (data / "dreambooth" / "pytorch_lora_weights.safetensors").read_bytes()
    refused = run_cli("synth", examples / "dog", "--category", "dog", "--out", tmp_path / "x", "--sd-model", tiny_sd,
                      "--method", "ip-adapter", "--refine", "patchdpo", check=False)
    assert refused.returncode == 2 and "refines a LoRA DreamBooth" in refused.stderr
