"""Video files and camera streams: frames decoded one at a time, `present` smoothed so it does not flicker.

A frame's score wobbles from frame to frame (motion blur, a paw over the face, compression), and
near the threshold the raw decision toggles many times a second. `Tracker` keeps, per object, an
exponential moving average of the score and decides with hysteresis: an object appears when the
smoothed score reaches its threshold and disappears only when it falls `hysteresis` below it; its
box is averaged the same way while it stays. `stream` applies it to any iterable of frames (a
camera's, or `read_video`'s), with one model run per frame, and never holds more than one frame.

Decoding and encoding video files use PyAV (FFmpeg's libraries), the optional `video` extra; photos
and camera frames need nothing more than the runtime.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from PIL import Image

from .errors import EdgePersrepError, ImageError

if TYPE_CHECKING:
    from .finder import Finder, Match

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")


@dataclass(frozen=True)
class Smoothing:
    alpha: float = 0.5  # weight of the newest frame in the score's moving average (1 = no smoothing)
    hysteresis: float = 0.03  # once present, an object stays so until its smoothed score is this far below threshold
    box_alpha: float = 0.5  # weight of the newest box in the box's moving average while the object stays


NO_SMOOTHING = Smoothing(alpha=1.0, hysteresis=0.0, box_alpha=1.0)


@dataclass
class Tracker:
    """One object's state across frames."""

    smoothing: Smoothing
    score: float | None = None
    present: bool = False
    box: tuple[float, float, float, float] | None = None

    def update(self, score: float, threshold: float) -> tuple[float, bool]:
        """The frame's raw score -> (smoothed score, smoothed present)."""
        a = self.smoothing.alpha
        self.score = score if self.score is None else a * score + (1 - a) * self.score
        cut = threshold - self.smoothing.hysteresis if self.present else threshold
        self.present = self.score >= cut
        if not self.present:
            self.box = None
        return self.score, self.present

    def smooth_box(self, box: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if box is None:
            return None
        b = self.smoothing.box_alpha
        self.box = tuple(map(float, box)) if self.box is None else tuple(
            b * new + (1 - b) * old for new, old in zip(box, self.box))
        return tuple(int(round(v)) for v in self.box)


@dataclass
class FrameResult:
    index: int
    time: float  # seconds from the start of the video (frame index / rate for a camera)
    matches: list["Match"]  # smoothed: score, present, box (and mask) as the user sees them
    raw: list["Match"] = field(default_factory=list)  # this frame alone
    image: Image.Image | None = None  # the frame (kept until the next one)


def stream(finder: "Finder", frames: Iterable[Image.Image | tuple[int, float, Image.Image]], task: str = "all",
           smoothing: Smoothing | None = Smoothing(), rate: float = 30.0) -> Iterator[FrameResult]:
    """Answer every frame as it comes: one model run, then each object's smoothed decision, and its box
    (and mask) when it is present. `frames`: PIL images (a camera), or (index, time, image) from
    `read_video`. A generator: frames are pulled one at a time, so memory stays flat."""
    trackers: dict[str, Tracker] = {}
    for n, item in enumerate(frames):
        index, time, image = item if isinstance(item, tuple) else (n, n / rate, item)
        (features,) = finder.embed([image])
        raw = finder.classify(features)
        shown = []
        for m in raw:
            tracker = trackers.setdefault(m.name, Tracker(smoothing or NO_SMOOTHING))
            score, present = tracker.update(m.score, finder.store.objects[m.name].threshold)
            s = replace(m, score=score, present=present)
            if present and task != "classify":
                s = finder.locate(features, s, with_mask=task in ("segment", "all"))
                s.box = tracker.smooth_box(s.box)
            shown.append(s)
        yield FrameResult(index, time, shown, raw, image)


def _av():
    try:
        import av
    except ImportError as exc:
        raise EdgePersrepError("videos need PyAV: pip install 'edge-persrep[video]' (or pip install av)") from exc
    return av


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _open(path: Path):
    av = _av()
    try:
        container = av.open(str(path))
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: no such file") from exc
    except av.error.FFmpegError as exc:
        raise ImageError(f"{path}: not a readable video ({exc}); re-encode it as MP4 (H.264)") from exc
    if not container.streams.video:
        container.close()
        raise ImageError(f"{path}: has no video stream")
    return av, container, container.streams.video[0]


def read_video(path: str | os.PathLike, every: int = 1) -> Iterator[tuple[int, float, Image.Image]]:
    """(index, time in seconds, RGB frame) for every `every`-th frame, decoded lazily."""
    path = Path(path)
    av, container, video = _open(path)
    with container:
        video.thread_type = "AUTO"
        rate = float(video.average_rate or 30)
        index = 0
        try:
            for index, frame in enumerate(container.decode(video)):
                if index % every == 0:
                    time = float(frame.time) if frame.time is not None else index / rate
                    yield index, time, frame.to_image()
        except av.error.FFmpegError as exc:
            raise ImageError(f"{path}: decoding failed at frame {index} ({exc}); the file may be truncated") from exc


def video_rate(path: str | os.PathLike) -> float:
    """Frames per second of a video file's first video stream (30 where it does not say)."""
    _, container, video = _open(Path(path))
    with container:
        return float(video.average_rate or 30)


class VideoWriter:
    """Frames (PIL images) -> an H.264 MP4 (MPEG-4 part 2 where FFmpeg has no x264), written as they come."""

    def __init__(self, path: str | os.PathLike, rate: float):
        self.av = _av()
        self.path, self.rate = Path(path), rate
        self.container = self.stream = None

    def write(self, image: Image.Image) -> None:
        av = self.av
        if self.container is None:
            self.container = av.open(str(self.path), "w")
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=max(1, round(self.rate)))
            self.stream.width, self.stream.height = image.width // 2 * 2, image.height // 2 * 2  # yuv420p: even
            self.stream.pix_fmt = "yuv420p"
        if image.size != (self.stream.width, self.stream.height):
            image = image.crop((0, 0, self.stream.width, self.stream.height))
        for packet in self.stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def toggles_per_minute(decisions: list[bool], seconds: float) -> float:
    """How often a yes/no sequence changes its mind, per minute of video (flicker)."""
    changes = sum(a != b for a, b in zip(decisions, decisions[1:]))
    return changes * 60.0 / seconds if seconds > 0 else math.nan
