"""Which negatives train and which calibrate `present` (server_side.negatives), checked by hand,
and a run that holds identities out of training and calibrates on them."""

import json

import pytest

from edge_persrep.server_side.negatives import generated_holdout, holdout_ranks, identity_of, split_for_calibration


def test_identity_is_the_name_before_the_last_underscore():
    assert identity_of("dog2_00.jpg") == "dog2"
    assert identity_of("rc_car_01.png") == "rc_car"
    assert identity_of("IMG7.jpg") == "IMG7"


def test_holdout_ranks():
    assert holdout_ranks(2) == []
    assert holdout_ranks(3) == [1]
    assert holdout_ranks(8) == [1, 4, 7]


def test_whole_identities_are_held_out_second_hardest_first():
    # identity hardness (max over its photos): a .9, b .8, c .5, d .2 -> ranked a b c d -> b held out
    identities = ["a", "a", "b", "c", "d", "b"]
    split = split_for_calibration(identities, [0.9, 0.1, 0.8, 0.5, 0.2, 0.3])
    assert split.unit == "identity"
    assert split.calibration == (2, 5) and split.train == (0, 1, 3, 4)
    assert split.record(identities)["calibration_identities"] == ["b"]


def test_ties_rank_by_name_so_the_split_is_deterministic():
    split = split_for_calibration(["c", "a", "b"], [0.5, 0.5, 0.5])
    assert split.calibration == (2,)  # ranked a, b, c: b is second


def test_too_few_identities_hold_out_photos_and_too_few_photos_none():
    split = split_for_calibration(["a", "a", "b", "b"], [0.1, 0.4, 0.3, 0.2])
    assert split.unit == "photo" and split.calibration == (2,)  # photos ranked 1, 2, 3, 0
    none = split_for_calibration(["a", "b"], [0.1, 0.2])
    assert none.unit == "none" and none.calibration == () and none.train == (0, 1)
    assert split_for_calibration([], []).unit == "none"


def test_generated_holdout_is_every_third_and_capped():
    train, held = generated_holdout(7, limit=32)
    assert held == [1, 4] and train == [0, 2, 3, 5, 6]
    assert generated_holdout(100, limit=5)[1] == [1, 4, 7, 10, 13]
    assert generated_holdout(2, limit=32) == ([0, 1], [])


@pytest.mark.slow  # a personalize with --calibrate-on held-out (~35 s); the holdout's choice is in the default run
def test_held_out_run_calibrates_on_identities_it_did_not_train_on(examples, tmp_path):
    """`--calibrate-on held-out`: the example negatives are 4 dogs (dog2_00.jpg ...); one is held out
    of training, whole, and enrolment calibrates on it; the run records which; export agrees."""
    pytest.importorskip("torch")
    from conftest import run_cli

    from edge_persrep.pipeline import RunDir

    run = tmp_path / "run"
    run_cli("personalize", examples / "dog", "--name", "d", "--category", "dog", "--out", run, "--negatives",
            examples / "negatives", "--steps", "2", "--calibrate-on", "held-out")
    record = json.loads((run / "run.json").read_text())
    calibration = record["calibration"]
    assert record["calibrate_on"] == "held-out" and calibration["unit"] == "identity"
    assert len(calibration["calibration_identities"]) == 1 and not calibration["on_training_negatives"]
    held = sorted((run / "calibration").glob("*.jpg"))
    trained = sorted((run / "negatives").glob("*.jpg"))
    assert len(held) == calibration["calibration"] >= 2 and len(trained) == calibration["train"]
    assert not {p.name for p in held} & {p.name for p in trained}
    assert json.loads((run / "train" / "summary.json").read_text())["negatives"] == len(trained)  # never trained on
    assert RunDir(run).enrolment_negatives() == held  # what `export RUN` re-enrols on


def test_default_run_trains_and_calibrates_on_every_negative(personalized_run):
    pytest.importorskip("torch")
    from edge_persrep.pipeline import RunDir

    record = json.loads((personalized_run / "run.json").read_text())
    assert record["calibrate_on"] == "training" and record["calibration"]["on_training_negatives"]
    trained = sorted((personalized_run / "negatives").glob("*.jpg"))
    assert len(trained) == 11 and not list((personalized_run / "calibration").glob("*.jpg"))
    assert RunDir(personalized_run).enrolment_negatives() == trained
