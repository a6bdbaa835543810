"""The CLI contract end to end: personalize -> find/retrieve/info/enroll/export, and its errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from edge_persrep.cli import main  # noqa: E402
from edge_persrep.runtime.dense import rle_to_mask  # noqa: E402


def test_personalize_writes_a_recorded_resumable_run(personalized_run):
    record = json.loads((personalized_run / "run.json").read_text())
    assert record["name"] == "my_dog" and record["backbone"] == "efficientnet_lite0" and record["synth"] == "augment"
    assert {"synth_s", "train_s", "export_enroll_s"} <= set(record["timings"])
    loss = json.loads((personalized_run / "train" / "loss.json").read_text())["loss"]
    assert len(loss) == 4
    manifest = json.loads((personalized_run / "synth" / "manifest.json").read_text())
    assert len(manifest["images"]) == 96 and all({"file", "seed", "source"} <= set(e) for e in manifest["images"])
    bundle = json.loads((personalized_run / "bundle" / "bundle.json").read_text())
    assert bundle["training"]["steps"] == 4


def test_personalize_ends_with_the_threshold_times_and_next_command(personalized_run):
    from edge_persrep.runtime import Finder

    said = (personalized_run.parent / "personalize.stdout").read_text().strip().splitlines()
    threshold = Finder.open(personalized_run / "bundle").store.objects["my_dog"].threshold
    assert said[0] == (f"personalized 'my_dog' (efficientnet_lite0, synth augment, preset quick): bundle at "
                       f"{personalized_run / 'bundle'}")
    assert said[1] == f"  present when the score is >= {threshold:.3f} (calibrated on 11 negatives)"
    assert said[2].startswith("  time: prepare ") and "| train " in said[2] and "| export + enroll " in said[2]
    assert said[3].startswith(f"  next: edge-persrep find {personalized_run / 'bundle'} PHOTO")
    assert "Constant folding" not in (personalized_run.parent / "personalize.stderr").read_text()  # known, harmless


def test_find_json_contract(personalized_run, examples, tmp_path):
    out = run_cli("find", personalized_run / "bundle", examples / "dog_heldout", examples / "heldout_others",
                  "--json", "--overlays", tmp_path)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 5
    for line in lines:
        assert set(line) == {"image", "results"}
        (r,) = line["results"]
        assert r["name"] == "my_dog" and isinstance(r["score"], float) and isinstance(r["present"], bool)
        if r["present"]:
            assert len(r["box"]) == 4 and r["mask_png"].endswith(".png")
            png = np.asarray(Image.open(r["mask_png"])) > 127
            assert (rle_to_mask(r["mask"]) == png).all()  # the mask itself is in the JSON (COCO RLE)
            assert r["mask"]["size"] == [Image.open(line["image"]).height, Image.open(line["image"]).width]
        else:
            assert r["box"] is None and r["mask"] is None and r["mask_png"] is None
    scores = {line["image"].split("/")[-1]: line["results"][0]["score"] for line in lines}
    assert min(scores["03.jpg"], scores["04.jpg"]) > scores["cat_00.jpg"]
    assert any(p.name.endswith(".overlay.jpg") for p in tmp_path.iterdir())


def test_overlays_of_photos_with_the_same_name_do_not_overwrite_each_other(tmp_path):
    from edge_persrep.cli import overlay_stems

    paths = [tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg", tmp_path / "x-2.jpg", tmp_path / "c" / "x.jpg"]
    assert list(overlay_stems(paths).values()) == ["x", "x-2", "x-2-2", "x-3"]


def test_retrieve_ranks_the_object_first(personalized_run, examples):
    out = run_cli("retrieve", personalized_run / "bundle", examples / "dog_heldout", examples / "heldout_others",
                  "--name", "my_dog", "--top", "5", "--json")
    ranks = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(ranks) == 5 and "dog_heldout" in ranks[0]["image"]
    assert [r["rank"] for r in ranks] == [1, 2, 3, 4, 5]


def test_a_run_directory_stands_for_its_bundle(personalized_run):
    """`info RUN` (and find, retrieve, enroll) use RUN/bundle: a new user's natural first try."""
    info = json.loads(run_cli("info", personalized_run, "--json").stdout)
    assert info["bundle"].endswith("bundle") and [o["name"] for o in info["objects"]] == ["my_dog"]


def test_enroll_a_second_object_and_info(personalized_run, examples, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(personalized_run / "bundle", bundle)
    out = run_cli("enroll", bundle, examples / "heldout_others" / "cat_00.jpg", "--name", "cat", "--category", "cat")
    assert out.stdout.startswith("enrolled 'cat' from 1 photos") and "warning" not in out.stderr  # my_dog calibrates
    info = json.loads(run_cli("info", bundle, "--json").stdout)
    assert [o["name"] for o in info["objects"]] == ["my_dog", "cat"] and info["checksums"] == "ok"
    out = run_cli("enroll", bundle, examples / "heldout_others" / "cat_00.jpg", "--name", "cat")
    assert out.stdout.startswith("replaced 'cat' from 1 photos")  # said, not silent


def test_enroll_with_nothing_to_calibrate_against_warns(pretrained_bundle, examples, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(pretrained_bundle, bundle)
    out = run_cli("enroll", bundle, examples / "dog", "--name", "dog")
    assert "warning: nothing to calibrate 'dog' against" in out.stderr and "--negatives DIR" in out.stderr
    out = run_cli("enroll", bundle, examples / "heldout_others" / "cat_00.jpg", "--name", "cat",
                  "--negatives", examples / "negatives")
    assert "warning" not in out.stderr


def test_export_run_and_pretrained(personalized_run, tmp_path):
    run_cli("export", personalized_run, "--out", tmp_path / "again")
    original = json.loads((personalized_run / "bundle" / "bundle.json").read_text())
    again = json.loads((tmp_path / "again" / "bundle.json").read_text())
    assert again["files"]["model"]["sha256"] == original["files"]["model"]["sha256"]  # same merged weights
    info = json.loads(run_cli("info", tmp_path / "again", "--json").stdout)
    assert [o["name"] for o in info["objects"]] == ["my_dog"]


def test_export_at_a_larger_input_size_gives_a_finer_grid_and_still_finds(personalized_run, examples, tmp_path):
    """`export RUN --input-size 448`: a 14x14 patch grid (not 10x10), the object re-enrolled at that
    size and still found in its held-out photos; a size the backbone cannot take is refused."""
    run_cli("export", personalized_run, "--out", tmp_path / "fine", "--input-size", "448")
    manifest = json.loads((tmp_path / "fine" / "bundle.json").read_text())
    grid = manifest["outputs"]["patch_grid"]
    assert manifest["input"]["size"] == 448 and (grid["height"], grid["width"], grid["stride"]) == (14, 14, 32)
    out = run_cli("find", tmp_path / "fine", examples / "dog_heldout", examples / "heldout_others", "--task", "detect",
                  "--json")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    results = {line["image"].split("/")[-1]: line["results"][0] for line in lines}
    assert min(results["03.jpg"]["score"], results["04.jpg"]["score"]) > results["cat_00.jpg"]["score"]
    assert all((r["box"] is not None) == r["present"] for r in results.values())
    refused = run_cli("export", personalized_run, "--out", tmp_path / "odd", "--input-size", "300", check=False)
    assert refused.returncode == 2 and "--input-size 300: use a multiple of 32" in refused.stderr
    assert not (tmp_path / "odd").exists()


def test_rerun_redoes_no_finished_stage(personalized_run, examples):
    """A rerun of a finished run trains, synthesises, exports and enrols nothing again, and run.json
    still says what the stages cost when they were done (a rerun wrote 0 s over them before)."""
    watched = [personalized_run / "train" / "loss.json", personalized_run / "synth" / "manifest.json",
               personalized_run / "bundle" / "bundle.json", personalized_run / "bundle" / "model.onnx",
               personalized_run / "bundle" / "prototypes.safetensors"]
    before = [p.stat().st_mtime_ns for p in watched]
    timings = json.loads((personalized_run / "run.json").read_text())["timings"]
    assert timings["train_s"] > 0
    run_cli("personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", personalized_run,
            "--negatives", examples / "negatives", "--steps", "4", "--seed", "1")
    assert [p.stat().st_mtime_ns for p in watched] == before
    again = json.loads((personalized_run / "run.json").read_text())["timings"]
    assert all(timings[k] <= again[k] < timings[k] + 5 for k in ("synth_s", "train_s"))


@pytest.mark.parametrize("args,message", [
    (["info", "/nonexistent/bundle"], "bundle.json: not found"),
    (["export", "--backbone", "vgg_unknown", "--pretrained", "--out", "{tmp}/x"], "unknown backbone"),
    (["personalize", "{tmp}/none", "--name", "a", "--category", "b", "--out", "{tmp}/r", "--negatives", "{tmp}"],
     "no such file"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    out = run_cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_cuda_without_cuda_fails_before_work(tmp_path, examples):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["personalize", str(examples / "dog"), "--name", "a", "--category", "dog", "--out", str(tmp_path / "r"),
                 "--negatives", str(examples / "negatives"), "--device", "cuda"])
    assert code == 2 and not (tmp_path / "r").exists()


def test_foreign_output_directory_is_refused(tmp_path, examples):
    (tmp_path / "mine.txt").write_text("keep me")
    code = main(["personalize", str(examples / "dog"), "--name", "a", "--category", "dog", "--out", str(tmp_path),
                 "--negatives", str(examples / "negatives")])
    assert code == 2 and (tmp_path / "mine.txt").read_text() == "keep me"


def test_duplicate_photos_are_refused(tmp_path, examples, pretrained_bundle):
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(examples / "dog" / "00.jpg", photos / "a.jpg")
    shutil.copy(examples / "dog" / "00.jpg", photos / "b.jpg")
    out = run_cli("enroll", pretrained_bundle, photos, "--name", "x", check=False)
    assert out.returncode == 2 and "b.jpg: the same photo as" in out.stderr


def test_find_answers_the_good_photos_and_names_the_bad_one(tmp_path, examples, personalized_run):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(examples / "dog_heldout", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = run_cli("find", personalized_run / "bundle", folder, "--json", check=False)
    assert out.returncode == 2 and len(out.stdout.splitlines()) == 2
    assert "broken.jpg: not a readable image" in out.stderr


def _can_mount() -> bool:
    import shutil

    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs a private mount namespace (root)")
def test_read_only_output_directory_gives_one_line_and_keeps_the_store(tmp_path, personalized_run, examples):
    import shutil

    bundle = tmp_path / "ro" / "bundle"
    shutil.copytree(personalized_run / "bundle", bundle)
    before = (bundle / "prototypes.safetensors").read_bytes()
    script = (f"mount --bind {tmp_path / 'ro'} {tmp_path / 'ro'} && mount -o remount,bind,ro {tmp_path / 'ro'} && "
              f"{sys.executable} -m edge_persrep.cli enroll {bundle} "
              f"{examples / 'heldout_others' / 'cat_00.jpg'} --name cat")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "Read-only file system" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert (bundle / "prototypes.safetensors").read_bytes() == before


def test_offline_flag_refuses_a_hub_backbone_with_what_to_do(tmp_path):
    out = run_cli("--offline", "export", "--backbone", "dinov2_vits14", "--pretrained", "--out", tmp_path / "b",
                  check=False)
    assert out.returncode == 2 and "--weights FILE" in out.stderr and not (tmp_path / "b").exists()


def test_a_run_recorded_before_a_training_setting_existed_still_resumes(personalized_run, examples, tmp_path,
                                                                        monkeypatch):
    """A TrainConfig field added later (precision) is filled with its default on resume: the old run
    is neither refused nor retrained, also where `auto` would now choose bf16 for a new run."""
    import shutil

    import torch

    from edge_persrep.pipeline import PersonalizeRequest

    run = tmp_path / "run"
    shutil.copytree(personalized_run, run)
    record = json.loads((run / "run.json").read_text())
    del record["train_config"]["precision"]
    (run / "run.json").write_text(json.dumps(record))
    summary = (run / "train" / "summary.json").read_bytes()
    run_cli("personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", run,
            "--negatives", examples / "negatives", "--steps", "4", "--seed", "1")
    assert (run / "train" / "summary.json").read_bytes() == summary  # reused, not trained again
    monkeypatch.setenv("EDGE_PERSREP_TRAIN_PRECISION", "bf16")  # a machine where auto means bf16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    request = PersonalizeRequest([examples / "dog"], "my_dog", "dog", run, negatives=[examples / "negatives"],
                                 steps=4, seed=1, device="cpu")
    assert request.plan().train_config.precision == "fp32"  # the run's own, so the same command resumes it
    fresh = PersonalizeRequest([examples / "dog"], "my_dog", "dog", tmp_path / "new", device="cpu",
                               negatives=[examples / "negatives"])
    assert fresh.plan().train_config.precision == "bf16"


@pytest.mark.slow  # two personalize runs (~45 s); refusing other negatives is in the default run
def test_rerun_with_other_settings_is_refused_not_mixed(personalized_run, examples, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(personalized_run, run)
    out = run_cli("personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", run,
                  "--negatives", examples / "negatives", "--steps", "5", "--seed", "1", check=False)
    assert out.returncode == 2 and "other settings (train_config)" in out.stderr
    assert json.loads((run / "train" / "summary.json").read_text())["steps"] == 4  # nothing was touched
    run_cli("personalize", examples / "dog" / "00.jpg", examples / "dog" / "01.jpg", "--name", "my_dog", "--category",
            "dog", "--out", run, "--negatives", examples / "negatives", "--steps", "5", "--seed", "1", "--force")
    assert json.loads((run / "train" / "summary.json").read_text())["steps"] == 5  # started over
    assert sorted(p.name for p in (run / "photos").iterdir()) == ["000_00.jpg", "001_01.jpg"]


@pytest.mark.slow  # a personalize + two exports on local weights (~50 s)
def test_run_on_local_weights_is_re_exported_on_them_and_refuses_others(examples, tmp_path):
    """run.json records --weights (path + sha256); `export RUN` rebuilds the backbone from that file,
    not from the packaged weights, and refuses a file whose contents changed."""
    import torch
    from safetensors.torch import save_file

    from edge_persrep.server_side.backbones import create_backbone

    model = create_backbone("efficientnet_lite0").model
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["conv_head.weight"] = state["conv_head.weight"] * 1.25  # other weights than the package's
    weights = tmp_path / "mine.safetensors"
    save_file(state, str(weights))
    run = tmp_path / "run"
    run_cli("personalize", examples / "dog", "--name", "d", "--category", "dog", "--out", run, "--weights", weights,
            "--negatives", examples / "negatives", "--steps", "2")
    record = json.loads((run / "run.json").read_text())
    assert record["weights_file"] == str(weights.resolve()) and len(record["weights_sha256"]) == 64
    run_cli("export", run, "--out", tmp_path / "again")
    model_sha = lambda b: json.loads((b / "bundle.json").read_text())["files"]["model"]["sha256"]  # noqa: E731
    assert model_sha(tmp_path / "again") == model_sha(run / "bundle")  # same base weights + same LoRA
    state["conv_head.weight"] = state["conv_head.weight"] * torch.tensor(0.5)
    save_file(state, str(weights))
    out = run_cli("export", run, "--out", tmp_path / "other", check=False)
    assert out.returncode == 2 and str(weights.resolve()) in out.stderr and "not the weights" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "other").exists()


def test_rerun_with_other_negatives_of_the_same_count_is_refused(personalized_run, examples, tmp_path):
    import shutil

    negatives = tmp_path / "negatives"
    shutil.copytree(examples / "negatives", negatives)
    first = sorted(negatives.iterdir())[0]
    first.write_bytes((examples / "heldout_others" / "dog7_00.jpg").read_bytes())  # same count, other photo
    run = tmp_path / "run"
    shutil.copytree(personalized_run, run)
    out = run_cli("personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", run,
                  "--negatives", negatives, "--steps", "4", "--seed", "1", check=False)
    assert out.returncode == 2 and "other settings (negatives)" in out.stderr


def test_bench_outside_a_checkout_asks_for_the_sample_photos(tmp_path):
    """A pip-installed package ships no photos: bench says which folder to pass, in one line."""
    out = run_cli("bench", "--examples", tmp_path, "--repeats", "1", "--out", tmp_path / "b.json", check=False)
    assert out.returncode == 2 and "--examples DIR" in out.stderr and "dog_heldout" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "b.json").exists()


def test_cli_writes_no_default_twice_the_configs_own_them():
    """Options the user leaves out keep the typed configs' defaults (argparse says None); given ones
    reach the config, and the scheduler's default step count follows a chosen scheduler."""
    from dataclasses import asdict

    from edge_persrep.cli import _diffusion_options, build_parser
    from edge_persrep.server_side.synth.personalized_generation import DiffusionOptions

    parser = build_parser()
    plain = parser.parse_args(["personalize", "x", "--name", "n", "--category", "c", "--out", "o"])
    assert asdict(_diffusion_options(plain)) == asdict(DiffusionOptions())
    given = parser.parse_args(["personalize", "x", "--name", "n", "--category", "c", "--out", "o", "--db-steps", "7",
                               "--scheduler", "dpm++", "--seed", "3", "--train-text-encoder", "--scenes", "5"])
    options = _diffusion_options(given)
    assert (options.dreambooth.steps, options.dreambooth.seed, options.dreambooth.train_text_encoder) == (7, 3, True)
    assert (options.sampling.scheduler, options.sampling.steps, options.backgrounds) == ("dpm++", 25, 5)
    assert options.negatives == DiffusionOptions().negatives
