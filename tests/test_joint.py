"""Joint personalization: several objects in one LoRA and one bundle; adding one later."""

import json
import shutil

import pytest

pytest.importorskip("torch")
from conftest import run_cli  # noqa: E402

from edge_persrep.runtime import Finder, list_images  # noqa: E402


@pytest.fixture(scope="module")
def joint_run(examples, tmp_path_factory):
    """my_dog (the example dog) and dog2 (three photos of another dog) trained together, 4 steps."""
    root = tmp_path_factory.mktemp("joint")
    dog2 = root / "dog2"
    dog2.mkdir()
    negatives = root / "negatives"
    negatives.mkdir()
    for p in list_images([examples / "negatives"]):
        shutil.copy(p, (dog2 if p.name.startswith("dog2_") else negatives) / p.name)
    run = root / "run"
    out = run_cli("personalize", "--object", f"my_dog={examples / 'dog'}", "--object", f"dog2={dog2}",
                  "--category", "dog", "--negatives", negatives, "--out", run, "--steps", "4")
    return run, out.stdout, negatives


def test_one_lora_one_bundle_for_every_object(joint_run, examples):
    run, stdout, _ = joint_run
    assert "joint bundle" in stdout and "'my_dog'" in stdout and "'dog2'" in stdout
    joint = json.loads((run / "joint.json").read_text())
    assert [o["name"] for o in joint["objects"]] == ["my_dog", "dog2"] and joint["generation"] == 0
    summary = json.loads((run / "train-0" / "summary.json").read_text())
    assert summary["objects"] == 2 and summary["anchors"] == 6 and summary["steps"] == 4
    assert sorted(p.name for p in (run / "objects").iterdir()) == ["dog2", "my_dog"]
    finder = Finder.open(run / "bundle")
    assert list(finder.store.objects) == ["my_dog", "dog2"]
    (features,) = finder.embed(list_images([examples / "dog_heldout"])[:1])
    assert [m.name for m in finder.find(features)] == ["my_dog", "dog2"]  # one model run, every object answered
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "bundle").iterdir()}
    run_cli("personalize", "--object", f"my_dog={examples / 'dog'}", "--object", f"dog2={joint_run[0].parent / 'dog2'}",
            "--category", "dog", "--negatives", joint_run[2], "--out", run, "--steps", "4")
    assert {p.name: p.stat().st_mtime_ns for p in (run / "bundle").iterdir()} == stamps  # a rerun exports nothing
    again = run_cli("personalize", "--object", f"my_dog={examples / 'dog'}", "--object", "cat=/nonexistent",
                    "--category", "dog", "--out", run, check=False)
    assert again.returncode == 2 and "a joint run with other objects" in again.stderr


def test_adding_an_object_keeps_the_others_and_a_failed_add_leaves_the_old_bundle(joint_run, examples, tmp_path,
                                                                                  monkeypatch):
    from edge_persrep.pipeline import joint
    from edge_persrep.runtime import finder as finder_module

    run = tmp_path / "run"
    shutil.copytree(joint_run[0], run)
    before = (run / "bundle" / "prototypes.safetensors").read_bytes()
    cat = tmp_path / "cat"
    cat.mkdir()
    shutil.copy(examples / "heldout_others" / "cat_00.jpg", cat)

    original, calls = finder_module.Finder.make_prototype, []

    def dying(self, name, *args, **kwargs):  # the new model is trained and exported: fail mid-enrolment
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(finder_module.Finder, "make_prototype", dying)
    with pytest.raises(RuntimeError):
        joint.add_object(run, joint.parse_object(f"cat:cat={cat}", "dog"), steps=2)
    monkeypatch.setattr(finder_module.Finder, "make_prototype", original)
    assert (run / "bundle" / "prototypes.safetensors").read_bytes() == before  # the old bundle, untouched
    assert list(Finder.open(run / "bundle").store.objects) == ["my_dog", "dog2"]
    assert json.loads((run / "joint.json").read_text())["generation"] == 0

    out = run_cli("personalize", "--add", f"cat:cat={cat}", "--out", run, "--steps", "2")  # again: resumes
    assert "'cat'" in out.stdout
    joint_record = json.loads((run / "joint.json").read_text())
    assert joint_record["generation"] == 1 and [o["name"] for o in joint_record["objects"]] == ["my_dog", "dog2", "cat"]
    summary = json.loads((run / "train-1" / "summary.json").read_text())
    assert summary["continued_from"].endswith("train-0/adapter") and summary["objects"] == 3
    finder = Finder.open(run / "bundle")
    assert list(finder.store.objects) == ["my_dog", "dog2", "cat"]
    (features,) = finder.embed(list_images([examples / "dog_heldout"])[:1])
    matches = {m.name: m for m in finder.find(features)}
    assert matches["my_dog"].score > matches["cat"].score  # the dogs are still found as dogs
    assert not list(run.glob(".bundle-*"))  # no staging left behind


def test_joint_training_negatives_take_the_users_once_and_every_objects_generated_ones(tmp_path):
    """A dog and a mug trained together with generated negatives: the mug's generated mugs are
    trained against too (they were dropped when only the first object's list was used), and the
    user's negatives, copied into each object's run, are counted once."""
    from edge_persrep.pipeline.joint import joint_negatives

    user_dog = [tmp_path / "dog/negatives/0000.jpg", tmp_path / "dog/negatives/0001.jpg"]
    user_mug = [tmp_path / "mug/negatives/0000.jpg", tmp_path / "mug/negatives/0001.jpg"]
    dogs = [tmp_path / "dog/synth/neg_000.png"]
    mugs = [tmp_path / "mug/synth/neg_000.png", tmp_path / "mug/synth/neg_001.png"]
    assert joint_negatives([user_dog, user_mug], [user_dog + dogs, user_mug + mugs]) == user_dog + dogs + mugs
    assert joint_negatives([user_dog, user_mug], [user_dog, user_mug]) == user_dog  # augment: nothing generated
    with pytest.raises(ValueError):
        joint_negatives([user_dog], [dogs + user_dog])
