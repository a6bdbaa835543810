"""The hard real-photo protocol: deterministic, and every label tells the truth about the pixels."""

import numpy as np
from PIL import Image

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.protocols import hard_test_set

COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255), "d": (255, 255, 0), "e": (0, 255, 255),
           "f": (255, 0, 255)}
CATEGORY = {"a": "dog", "b": "dog", "c": "dog", "d": "dog", "e": "mug", "f": "mug"}


def _dataset(root):
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
