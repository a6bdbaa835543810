"""Videos and camera streams: smoothing that stops `present` flickering, lazy decoding, `find VIDEO`."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli

from edge_persrep.runtime import Finder, list_images, load_image
from edge_persrep.runtime.video import NO_SMOOTHING, Smoothing, Tracker, toggles_per_minute

RAW = [0.65, 0.58, 0.63, 0.59, 0.62, 0.40, 0.40]  # around a threshold of 0.6: the raw decision flickers


def test_moving_average_with_hysteresis_by_hand():
    tracker = Tracker(Smoothing(alpha=0.5, hysteresis=0.03))
    smoothed = [tracker.update(s, threshold=0.6) for s in RAW]
    # 0.65, (0.58+0.65)/2 = 0.615, 0.6225, 0.60625, 0.613125 (all >= 0.6 - 0.03 once present), then 0.5066 < 0.57
    np.testing.assert_allclose([s for s, _ in smoothed], [0.65, 0.615, 0.6225, 0.60625, 0.613125, 0.5065625,
                                                          0.45328125])
    assert [p for _, p in smoothed] == [True] * 5 + [False] * 2
    assert toggles_per_minute([p for _, p in smoothed], seconds=30) == 2.0  # one change in 30 s
    raw = Tracker(NO_SMOOTHING)
    decisions = [raw.update(s, threshold=0.6)[1] for s in RAW]
    assert decisions == [s >= 0.6 for s in RAW] and toggles_per_minute(decisions, seconds=30) == 10.0


def test_a_newcomer_must_reach_the_threshold_itself_and_boxes_are_averaged_while_present():
    tracker = Tracker(Smoothing(alpha=0.5, hysteresis=0.03, box_alpha=0.5))
    assert tracker.update(0.58, 0.6) == (0.58, False)  # within the hysteresis band, but it was not present
    assert tracker.update(0.70, 0.6)[1] is True
    assert tracker.smooth_box((0, 0, 10, 10)) == (0, 0, 10, 10)
    assert tracker.smooth_box((10, 10, 20, 20)) == (5, 5, 15, 15)
    tracker.update(0.0, 0.6)  # gone: the box starts afresh next time
    tracker.update(1.0, 0.6)
    tracker.update(1.0, 0.6)
    assert tracker.present and tracker.smooth_box((10, 10, 20, 20)) == (10, 10, 20, 20)


@pytest.fixture(scope="module")
def dog_bundle(pretrained_bundle, examples, tmp_path_factory):
    bundle = shutil.copytree(pretrained_bundle, tmp_path_factory.mktemp("video") / "bundle")
    Finder.open(bundle).enroll("my_dog", list_images([examples / "dog"]), "dog",
                               negatives=list_images([examples / "negatives"]))
    return bundle


def test_stream_pulls_one_frame_at_a_time(dog_bundle, examples):
    finder = Finder.open(dog_bundle)
    photo = load_image(list_images([examples / "dog_heldout"])[0])
    pulled = []

    def camera():
        for n in range(1000):
            pulled.append(n)
            yield photo

    results = finder.stream(camera(), task="detect")
    first = next(results)
    assert pulled == [0] and first.index == 0 and first.matches[0].present and first.matches[0].box is not None


@pytest.fixture(scope="module")
def video(examples, tmp_path_factory):
    """18 frames at 10 fps: 6 of a held-out photo of the dog, 6 of the cat, 6 of the dog again."""
    av = pytest.importorskip("av")
    dog = load_image(list_images([examples / "dog_heldout"])[0]).resize((320, 240))
    cat = load_image(examples / "heldout_others" / "cat_00.jpg").resize((320, 240))
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for image in [dog] * 6 + [cat] * 6 + [dog] * 6:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_find_on_a_video_answers_every_frame_and_writes_an_annotated_copy(dog_bundle, video, tmp_path):
    av = pytest.importorskip("av")
    out = run_cli("find", dog_bundle, video, "--json", "--overlays", tmp_path / "o")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["frame"] for d in lines] == list(range(18))
    assert [round(d["time"], 1) for d in lines[:3]] == [0.0, 0.1, 0.2]
    present = [d["results"][0]["present"] for d in lines]
    # smoothing lags by at most a frame at each change; away from the changes, the truth
    assert present[:6] == [True] * 6 and present[8:12] == [False] * 4 and present[14:] == [True] * 4
    assert all((d["results"][0]["box"] is not None) == p for d, p in zip(lines, present))
    with av.open(str(tmp_path / "o" / "clip.annotated.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 18 and frames[0].shape == (240, 320, 3)
    assert not np.array_equal(frames[0], frames[6])  # a dog frame carries its box, mask and label

    every = run_cli("find", dog_bundle, video, "--json", "--every", "3", "--no-smoothing", "--task", "classify")
    assert [json.loads(line)["frame"] for line in every.stdout.splitlines()] == [0, 3, 6, 9, 12, 15]
    text = run_cli("find", dog_bundle, video).stdout.splitlines()
    assert [line.split("\t")[3] for line in text[:-1]] == ["appears", "disappears", "appears"]
    assert text[-1].endswith("18 frames answered")


def test_unreadable_video_gives_one_line(dog_bundle, tmp_path):
    pytest.importorskip("av")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = run_cli("find", dog_bundle, bad, check=False)
    assert out.returncode == 2 and "broken.mp4: not a readable video" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_without_pyav_the_error_says_what_to_install(monkeypatch):
    import builtins

    from edge_persrep.runtime import EdgePersrepError
    from edge_persrep.runtime.video import read_video

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(EdgePersrepError, match=r"edge-persrep\[video\]"):
        next(read_video("clip.mp4"))
