"""The hard real-photo protocol: deterministic, and every label tells the truth about the pixels."""

import numpy as np
from PIL import Image

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.protocols import hard_test_set

COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255),
           "f": (255, 0, 255)}
CATEGORY = {"a": "dog", "b": "dog", "c": "dog", "d": "dog", "e": "mug", "f": "mug"}


def _dataset(root):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["subject_name,class"]
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for k in range(5):  # 3 references (darker) + 2 held out (pure colour)
            shade = 0.5 if k < 3 else 1.0
            Image.new("RGB", (96, 64), tuple(int(c * shade) for c in colour)).save(root / name / f"{k:02d}.png")
        lines.append(f"{name},{CATEGORY[name]}")
    (root / "prompts_and_classes.txt").write_text("\n".join(lines))
    return load_dreambooth(root)


def _owners(image):
    pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
    return {n for n, c in COLOURS.items() if c in pixels}, {n for n, c in COLOURS.items()
                                                           if tuple(int(x * 0.5) for x in c) in pixels}


def test_protocol_is_deterministic_and_labels_match_pixels(tmp_path):
    subjects = _dataset(tmp_path)
    first, second = hard_test_set(subjects), hard_test_set(subjects)
    assert [np.asarray(t.image).tobytes() for t in first] == [np.asarray(t.image).tobytes() for t in second]
    assert len(first) == 6 * 2 * 4 and {t.kind for t in first} == {"crop", "occlude", "small", "collage"}
    for t in first:
        shown, reference_pixels = _owners(t.image)
        assert not reference_pixels, "test images must never contain reference photos"
        assert shown == t.subjects, (t.kind, t.source, shown, t.subjects)
        for box in t.boxes.values():
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= t.image.width and 0 <= y0 < y1 <= t.image.height


def test_collage_fillers_are_look_alikes_when_there_are_enough(tmp_path):
    subjects = _dataset(tmp_path)
    for t in hard_test_set(subjects):
        if t.kind == "collage" and CATEGORY[t.source[0]] == "dog":
            assert {CATEGORY[n] for n in t.subjects} == {"dog"}  # 4 dogs: the subject and 3 look-alikes


def test_eval_runner_dreambooth_layout_is_identity_disjoint(tmp_path):
    """`edge-persrep eval --layout dreambooth`: an object trains against its seen subjects only, and
    its test images and gallery never show one of them (the leak the old runner had)."""
    from edge_persrep.eval.runner import _negatives_dir, load_dreambooth_hard

    _dataset(tmp_path / "data")
    evalset = load_dreambooth_hard(tmp_path / "data", tmp_path / "work")
    for obj in evalset.objects:
        seen = {o.name for o in evalset.negatives_for(obj)}
        shown = evalset.shown_to(obj)
        assert obj.name in shown and not seen & shown and seen | shown == set(COLOURS)
        assert {CATEGORY[n] for n in seen} >= {CATEGORY[obj.name]} or CATEGORY[obj.name] == "mug"
        files = sorted(p.name for p in _negatives_dir(evalset, obj, tmp_path / "work").iterdir())
        assert files and {f.rsplit("_", 1)[0] for f in files} == seen
        visible = [t for t in evalset.tests if set(t.instances) <= shown]
        assert any(obj.name in t.instances for t in visible)


def test_disjoint_test_set_shows_only_unseen_subjects_and_labels_match_pixels(tmp_path):
    from edge_persrep.eval.protocols import SCENE_KINDS, disjoint_test_set, identity_split, lookalike_targets

    subjects = _dataset(tmp_path)
    assert lookalike_targets(subjects) == list(COLOURS)  # every subject has a same-category look-alike
    split = identity_split(subjects, "a")
    assert split == identity_split(subjects, "a")  # fixed seed
    assert len([n for n in split.seen if CATEGORY[n] == "dog"]) == 1  # 3 other dogs: 1 seen, 2 unseen
    assert not set(split.seen) & set(split.unseen) and set(split.seen) | set(split.unseen) == set(COLOURS) - {"a"}
    mug = identity_split(subjects, "e")
    assert mug.seen == () or "f" not in mug.seen and mug.note  # the only other mug is a test distractor
    test = disjoint_test_set(subjects, split)
    assert {t.kind for t in test} == set(SCENE_KINDS)
    for t in test:
        shown, reference_pixels = _owners(t.image)
        assert not reference_pixels and shown == t.subjects, (t.kind, t.source, shown, t.subjects)
        assert not shown & set(split.seen)
        x0, y0, x1, y1 = t.boxes[t.source.split("/")[0]]
        region = np.asarray(t.image)[y0:y1, x0:x1].reshape(-1, 3)
        share = (region == COLOURS[t.source.split("/")[0]]).all(axis=1).mean()
        assert share > (0.55 if t.kind == "occlude" else 0.9), (t.kind, share)  # the box is where it is


def test_a_group_of_the_users_things_is_split_like_one_target_and_every_member_is_tested(tmp_path):
    from edge_persrep.eval.protocols import disjoint_test_set, group_split, identity_split, seen_negatives

    subjects = _dataset(tmp_path / "data")
    assert group_split(subjects, "a", ("a",)) == identity_split(subjects, "a")  # a group of one is one target
    split = group_split(subjects, "my_dogs", ("a", "b"))
    assert split.targets == ("a", "b") and not {"a", "b"} & set(split.seen + split.unseen)
    assert set(split.seen) | set(split.unseen) == set(COLOURS) - {"a", "b"}
    assert {CATEGORY[n] for n in split.unseen} >= {"dog"}  # c or d: an unseen look-alike for the test
    test = disjoint_test_set(subjects, split)
    for t in test:
        shown, reference_pixels = _owners(t.image)
        assert not reference_pixels and shown == t.subjects and not shown & set(split.seen)
        assert len(shown & {"a", "b"}) <= 1  # members never fill each other's scenes: confusion is measured alone
    assert {t.source.split("/")[0] for t in test} >= {"a", "b"}
    negatives = seen_negatives(subjects, split, tmp_path / "negatives")
    per_subject = {n: len(list(negatives.glob(f"{n}_*"))) for n in split.seen}
    assert all(k == (3 if CATEGORY[n] == "dog" else 1) for n, k in per_subject.items())
    try:
        group_split(subjects, "mixed", ("a", "e"))
    except ValueError as exc:
        assert "one category" in str(exc)
    else:
        raise AssertionError("a group of two categories was accepted")


def test_other_category_backgrounds_show_no_look_alike_and_nothing_the_negatives_lack(tmp_path):
    from edge_persrep.eval.protocols import identity_split, other_category_backgrounds, seen_negatives

    subjects = _dataset(tmp_path / "data")
    split = identity_split(subjects, "a")
    negatives = {p.name for p in seen_negatives(subjects, split, tmp_path / "negatives").iterdir()}
    backgrounds = {p.name for p in other_category_backgrounds(subjects, split, tmp_path / "backgrounds").iterdir()}
    owners = {name.rsplit("_", 1)[0] for name in backgrounds}
    assert backgrounds and backgrounds <= negatives  # the same photos training already sees
    assert owners == {n for n in split.seen if CATEGORY[n] != "dog"}  # every seen other-category subject, no dog


def test_the_validation_split_holds_out_seen_look_alikes_and_never_shows_a_test_identity(tmp_path):
    from edge_persrep.eval.protocols import disjoint_test_set, identity_split, validation_split

    subjects = _dataset(tmp_path)
    test_split, split = identity_split(subjects, "a"), validation_split(subjects, "a")
    assert split == validation_split(subjects, "a")  # fixed seed
    assert set(split.seen) | set(split.unseen) == set(test_split.seen)  # only the test's seen identities
    assert not set(split.seen) & set(split.unseen)
    (seen_dog,) = [n for n in test_split.seen if CATEGORY[n] == "dog"]
    assert seen_dog in split.unseen and seen_dog not in split.seen  # the look-alike is new to the validation model
    for t in disjoint_test_set(subjects, split):
        assert not t.subjects & set(test_split.unseen) and not t.subjects & set(split.seen)
    mug = validation_split(subjects, "e")  # the only other mug is the test's: the validation has no mug to show
    assert "mug" not in {CATEGORY[n] for n in mug.unseen} and "other categories only" in mug.note
