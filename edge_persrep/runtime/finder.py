"""Finder: embed a photo once, then answer classify / retrieve / detect / segment from its features.

Like SAM's predictor, the expensive step (`embed`: one model run) is separate from the cheap
per-object questions, which use only the global embedding and the patch grid.

Is the object in the photo? The paper scores the global embedding (max cosine to the reference
photos). In a cluttered photo where the object fills a quarter or a ninth of the frame that
embedding is mostly something else, so the score also looks where the object may be: windows of
the patch grid at three sizes (dense.pooled_windows) are compared with the references' object
features, and the object's score is the larger of the two. Both compare with *every* reference
and take the mean (scoring "mean"), not the best one: a look-alike that happens to resemble one
of the photos does not win (README, "Scoring by the references' mean"). `present` compares the
score with a threshold calibrated at enrolment on the same kind of scores: the references (each
against the others), 2x2 and 3x3 scenes composed of a reference among negatives, the negatives
and scenes of them. Among the user's objects of one category, a place in the frame is at most
one of them: of two over their thresholds whose places overlap (the best window where the region
score decided, else the whole frame), or where the higher one scores at least as high in the
other's best window, the higher score is present (one_claim_per_place; README, "One place, one
look-alike").
"""

from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from . import dense
from .bundle import Bundle
from .errors import EdgePersrepError, StoreError
from .files import locked
from .images import compose_grid, load_image, resize_to_input
from .metrics import balanced_accuracy_by_cut
from .store import SCORING_RULES, Prototype, PrototypeStore
from .threads import one_blas_thread
from .video import FrameResult, Smoothing
from .video import stream as stream_frames

PHOTO_SIDE = 384  # reference photos kept in the store are downscaled to this long side
SCENE_GRIDS = (2, 3)  # enrolment calibrates on 2x2 and 3x3 scenes (one reference among negatives)
SCENE_SIDE = 640
SAME_PLACE = 0.5  # two places (claimed_places) are one when their overlap covers this share of the smaller


@dataclass
class ImageFeatures:
    """One photo's model outputs. Treat them as read-only: the Finder keeps the last photo's pooled
    windows, recognised by the grid array's identity, so a grid changed in place would be scored
    with the windows of what it held before; a new frame needs new arrays (as `embed` makes)."""

    embedding: np.ndarray  # [D], unit norm
    grid: np.ndarray  # [h, w, C], each patch unit norm
    width: int  # of the original photo, for mapping boxes back
    height: int


@dataclass
class Match:
    """One enrolled object's answer for one photo."""

    name: str
    score: float  # max(global_score, region_score) (only global_score for objects enrolled before regions)
    present: bool  # score >= the object's calibrated threshold
    global_score: float = 0.0  # cosine of the photo's embedding to the object's references (their mean;
    # the best one for objects scored "region" or "global", as the paper does)
    region_score: float = 0.0  # best window of the patch grid against the references' object features
    region_box: tuple[int, int, int, int] | None = None  # that window, in photo pixels
    box: tuple[int, int, int, int] | None = None  # [x0, y0, x1, y1) in photo pixels
    box_score: float | None = None  # max cosine of box-pooled patches to the references' (paper)
    mask: np.ndarray | None = None  # bool [height, width]
    outscored_by: str | None = None  # the user's object of the same category that passed its threshold
    # with a higher score at the same place (claimed_places): `present` is False for this one


def decision_threshold(positives: Sequence[float], negatives: Sequence[float], default: float) -> float:
    """The cut between scores of the object (leave-one-out over its references) and of other things.

    Both known: the midpoint of the gap if they separate, else the cut with the best balanced
    accuracy. Positives only: just below the weakest positive (a margin of 0.05, since held-out
    photos score lower than the references score against each other). Neither: `default`.
    """
    pos, neg = np.sort(np.asarray(positives, float)), np.sort(np.asarray(negatives, float))
    if len(pos) and len(neg):
        if pos[0] > neg[-1]:
            return float((pos[0] + neg[-1]) / 2)
        cuts, balanced = balanced_accuracy_by_cut(pos, neg)
        return float(cuts[int(np.argmax(balanced))])
    if len(pos):
        return float(pos[0] - 0.05)
    return float(default)


def top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Rank gallery rows [N, D] by their best cosine to any query row [K, D]: [(row, score)], best
    first (ties by row). argpartition keeps it O(N) for a large gallery and a small k."""
    best = (gallery @ queries.T).max(axis=1)
    k = min(k, len(best))
    candidates = np.argpartition(-best, k - 1)[:k] if k < len(best) else np.arange(len(best))
    order = candidates[np.lexsort((candidates, -best[candidates]))]
    return [(int(i), float(best[i])) for i in order]


def embed_images(images: Iterable[Image.Image | str | os.PathLike], size: int,
                 run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], batch_size: int) -> list[ImageFeatures]:
    """Photos (or their paths) -> features, `batch_size` at a time through `run`, which maps uint8
    [N, size, size, 3] to (embeddings [N, D], patch grids [N, h, w, C]): an ONNX session or torch."""
    images = list(images)
    out: list[ImageFeatures] = []
    for start in range(0, len(images), batch_size):
        chunk = _as_images(images[start:start + batch_size])
        embeddings, grids = run(np.stack([resize_to_input(im, size) for im in chunk]))
        out += [ImageFeatures(e, g, im.width, im.height) for e, g, im in zip(embeddings, grids, chunk)]
    return out


def object_cells(features: Sequence[ImageFeatures], masks: Sequence[np.ndarray] | None = None,
                 negatives: Sequence[ImageFeatures] = ()) -> list[np.ndarray]:
    """Each reference photo's object cells on its patch grid (bool [h, w]): from photo-sized masks,
    or found from what the photos share against the negatives' patches (dense.foreground_patches)."""
    if masks is not None:
        return [dense.mask_to_grid(m, f.grid.shape[:2]) for m, f in zip(masks, features)]
    c = features[0].grid.shape[2]
    bank = np.concatenate([f.grid.reshape(-1, c) for f in negatives]) if len(negatives) else None
    return dense.foreground_patches([f.grid for f in features], bank)


class Finder:
    """A bundle's model and its enrolled objects: the whole on-device API.

        finder = Finder.open("runs/my_dog/bundle")        # checksums and the store's model hash verified
        (features,) = finder.embed(["frame.jpg"])          # the one model run per photo
        for m in finder.find(features, task="all"):        # every object: score, present, box, mask
            print(m.name, m.present, m.box)

    `embed` is the only expensive call; `classify`, `locate`, `find` and `retrieve` reuse its
    features, so one frame answers every task for every object. `enroll` adds an object from
    photos (calibrating its `present` threshold on negatives and the other objects) and saves the
    store atomically. Errors are `EdgePersrepError` subclasses whose message names the file and
    the fix.
    """

    def __init__(self, bundle: Bundle, store: PrototypeStore | None = None, one_per_place: bool = True):
        self.bundle = bundle
        self.one_per_place = one_per_place  # False: each object's `present` at its threshold alone
        if store is None:
            if bundle.store_path.exists():
                store = PrototypeStore.load(bundle.store_path, bundle.model_sha256)
            else:
                layout = bundle.layout
                store = PrototypeStore(bundle.model_sha256, layout.embedding_dim, layout.grid_dim)
        elif store.model_sha256 != bundle.model_sha256:
            raise StoreError("the prototype store was computed with another model; re-enroll the objects")
        self.store = store

    @classmethod
    def open(cls, bundle_dir: str | os.PathLike, variant: str | None = None) -> "Finder":
        """Load a bundle directory (or a variant of its model: "fp16", "int8", "ort") with its store."""
        return cls(Bundle.load(bundle_dir, variant=variant))

    # --- the expensive step -------------------------------------------------------------------
    def embed(self, images: Iterable[Image.Image | str | os.PathLike], batch_size: int = 8) -> list[ImageFeatures]:
        """Run the model on photos (PIL images or paths, any size): one ImageFeatures per photo,
        its unit global embedding and unit patch grid, in batches of `batch_size`."""
        return embed_images(images, self.bundle.input_size, self.bundle.run, batch_size)

    # --- the cheap questions ------------------------------------------------------------------
    def _objects(self, names: Sequence[str] | None) -> list[Prototype]:
        if not self.store.objects:
            raise StoreError(f"{self.bundle.store_path}: no objects enrolled; run `edge-persrep enroll` first")
        if names is None:
            return list(self.store.objects.values())
        missing = [n for n in names if n not in self.store.objects]
        if missing:
            raise EdgePersrepError(f"not enrolled in {self.bundle.root}: {', '.join(missing)} "
                                   f"(enrolled: {', '.join(self.store.objects)})")
        return [self.store.objects[n] for n in names]

    def _reference_matrix(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Prototype]]:
        """All objects' reference embeddings [sum K, D] and object features [sum K, C] stacked once,
        with row offsets per object, so scoring thousands of objects is two matrix products; rebuilt
        when the store changes."""
        objects = list(self.store.objects.values())
        cached = getattr(self, "_matrix", None)
        if cached is None or len(cached[3]) != len(objects) or any(a is not b for a, b in zip(cached[3], objects)):
            # (by identity: an object enrolled again under its name is a new Prototype)
            sizes = [len(p.embeddings) for p in objects]
            self._matrix = (np.concatenate([p.embeddings for p in objects]),
                            np.concatenate([p.box_features for p in objects]),
                            np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), objects)
        return self._matrix

    @one_blas_thread()
    def classify(self, features: ImageFeatures, names: Sequence[str] | None = None) -> list[Match]:
        """Each object's global, region and combined score, and `present` at its threshold."""
        chosen = self._objects(names)
        embeddings, object_features, offsets, objects = self._reference_matrix()
        rules = [p.scoring for p in objects]
        global_scores = per_object(embeddings @ features.embedding, offsets, rules)  # [objects]
        windows, cells = self._region_windows(features)
        window_scores = per_object(windows @ object_features.T, offsets, rules)  # [windows, objects]
        region_scores, best_window = window_scores.max(axis=0), window_scores.argmax(axis=0)
        scores = np.array([combined_score(float(g), float(r), p.scoring)
                           for g, r, p in zip(global_scores, region_scores, objects)])
        thresholds = np.array([p.threshold for p in objects])
        present = scores >= thresholds
        # at_place[i, k]: k's window score in i's best window (none for objects scored globally only)
        at_place = np.where(np.array([r != "global" for r in rules])[None, :], window_scores[best_window], -np.inf)
        rival = (one_claim_per_place(scores, present, claimed_places(cells[best_window], global_scores, region_scores,
                                                                     rules, features.grid.shape[:2]),
                                     [p.category for p in objects], at_place=at_place)
                 if self.one_per_place else np.full(len(objects), -1))
        match_of = {}
        for i, p in enumerate(objects):
            box = dense.cells_to_pixels(cells[best_window[i]], features.grid.shape[:2], features.width,
                                        features.height)
            match_of[p.name] = Match(p.name, float(scores[i]), bool(present[i] and rival[i] < 0),
                                     float(global_scores[i]), float(region_scores[i]), box,
                                     outscored_by=objects[rival[i]].name if rival[i] >= 0 else None)
        return [match_of[p.name] for p in chosen]

    @one_blas_thread()
    def locate(self, features: ImageFeatures, match: Match, with_mask: bool) -> Match:
        """Fill `match.box`, `match.box_score` (and `match.mask`) from the patch-similarity map."""
        p = self.store.objects[match.name]
        sim = dense.similarity_map(features.grid, p.targets)
        mask, box = dense.localize(sim, features.width, features.height, anchor=self._object_extent(features, p),
                                   with_mask=with_mask)
        match.box, match.mask = box, mask
        if box is not None:
            match.box_score = float((p.box_features @ self._box_pooled(features, box)).max())
        return match

    def find(self, features: ImageFeatures, task: str = "all", names: Sequence[str] | None = None) -> list[Match]:
        """task: classify | detect | segment | all. Boxes and masks are computed for the objects
        judged present (call `locate` to get one regardless, e.g. for evaluation)."""
        if task not in ("classify", "detect", "segment", "all"):
            raise EdgePersrepError(f"unknown task '{task}': use classify, detect, segment or all")
        matches = self.classify(features, names)
        if task != "classify":
            matches = [self.locate(features, m, with_mask=task in ("segment", "all")) if m.present else m
                       for m in matches]
        return matches

    def stream(self, frames: Iterable, task: str = "all", smoothing: Smoothing | None = None,
               rate: float = 30.0) -> Iterator[FrameResult]:
        """Answer a video or camera stream frame by frame, with `present` smoothed over time (no
        flicker) and boxes steadied: a generator of video.FrameResult. `frames`: PIL images, or
        (index, time, image) from video.read_video. `smoothing=video.NO_SMOOTHING` gives raw decisions."""
        return stream_frames(self, frames, task, smoothing or Smoothing(), rate)

    def retrieve(self, name: str, gallery: Sequence[ImageFeatures], top: int | None = None) -> list[tuple[int, float]]:
        """Rank gallery photos by how strongly they show `name`: [(index, score)], best first."""
        (p,) = self._objects([name])
        return top_k(np.stack([g.embedding for g in gallery]), p.embeddings, top or len(gallery))

    def _object_extent(self, features: ImageFeatures, p: Prototype) -> tuple[int, int, int, int] | None:
        """Where the object is in the photo (pixels): the box `locate` keeps its blob to
        (dense.object_window over the region windows)."""
        windows, cells = self._region_windows(features)
        extent = dense.object_window(over_references(windows @ p.box_features.T, p.scoring), cells)
        return dense.cells_to_pixels(extent, features.grid.shape[:2], features.width, features.height)

    def _region_windows(self, features: ImageFeatures) -> tuple[np.ndarray, np.ndarray]:
        """dense.region_windows of this photo's grid, kept for the last photo: classify and locate
        of one photo pool the windows once."""
        cached = getattr(self, "_windows_of", None)
        if cached is None or cached[0] is not features.grid:
            cached = (features.grid, *dense.region_windows(features.grid))
            self._windows_of = cached
        return cached[1], cached[2]

    @staticmethod
    def _box_pooled(features: ImageFeatures, box: tuple[int, int, int, int]) -> np.ndarray:
        h, w, _ = features.grid.shape
        x0, y0, x1, y1 = box
        gx0, gy0 = int(x0 * w / features.width), int(y0 * h / features.height)
        gx1 = max(int(np.ceil(x1 * w / features.width)), gx0 + 1)
        gy1 = max(int(np.ceil(y1 * h / features.height)), gy0 + 1)
        return dense.l2_normalize(features.grid[gy0:gy1, gx0:gx1].reshape(-1, features.grid.shape[2]).mean(axis=0))

    # --- enrolment ----------------------------------------------------------------------------
    def make_prototype(self, name: str, photos: Sequence[str | os.PathLike | Image.Image], category: str = "",
                       negatives: Sequence[str | os.PathLike | Image.Image] = (),
                       masks: Sequence[np.ndarray] | None = None, scoring: str = "mean",
                       others: Sequence[Image.Image] | None = None) -> Prototype:
        """Embed reference photos and take their object patches from `masks` (bool, photo-sized)
        or, without masks, find them (dense.foreground_patches). The threshold is calibrated
        against `negatives` and the photos of the user's other objects: `others`, or by default
        every other object already in the store (see the module docstring). `scoring`: a rule of
        SCORING_RULES (the older ones are kept for comparisons)."""
        images, negative_images = _as_images(photos), _as_images(negatives)
        feats, neg_feats = self.embed(images), self.embed(negative_images)
        c = self.bundle.layout.grid_dim
        grid_masks = object_cells(feats, masks, neg_feats)
        targets, box_features = [], []
        for f, m in zip(feats, grid_masks):
            targets.append(dense.target_feature(f.grid[m]))
            x0, y0, x1, y1 = dense.mask_box(m)
            box_features.append(dense.l2_normalize(f.grid[y0:y1, x0:x1].reshape(-1, c).mean(axis=0)))
        embeddings, box_features = np.stack([f.embedding for f in feats]), np.stack(box_features)
        if others is None:
            others = [im for other in self.store.objects.values() if other.name != name for im in stored_photos(other)]
        others = list(others)
        if scoring not in SCORING_RULES:
            raise EdgePersrepError(f"unknown scoring '{scoring}': use {' or '.join(SCORING_RULES)}")
        positives, negatives_scores = self._calibration_scores(images, feats, embeddings, box_features,
                                                               negative_images + others, neg_feats + self.embed(others),
                                                               scoring)
        threshold = decision_threshold(positives, negatives_scores, self.bundle.default_threshold)
        return Prototype(name, category, embeddings, np.stack(targets), box_features, threshold,
                         [_jpeg(im) for im in images], scoring)

    def _calibration_scores(self, images: list[Image.Image], feats: list[ImageFeatures], embeddings: np.ndarray,
                            box_features: np.ndarray, negative_images: list[Image.Image],
                            negative_feats: list[ImageFeatures], scoring: str) -> tuple[list[float], list[float]]:
        """Scores of the object (each reference, alone and in 2x2/3x3 scenes among negatives, against
        the other references) and of other things (the negatives, and scenes made only of them).
        Scenes are for region scoring only; "global" calibrates as the paper's score always did."""
        use_scenes = bool(negative_images) and scoring != "global"  # "global": calibrated as before regions
        positives: list[float] = []
        if len(images) > 1:
            for i, (image, f) in enumerate(zip(images, feats)):
                rest = np.arange(len(images)) != i
                scenes = [scene_with(image, negative_images, n, offset=i) for n in SCENE_GRIDS] if use_scenes else []
                for g in [f] + self.embed(scenes):
                    positives.append(object_score(g, embeddings[rest], box_features[rest], scoring))
        rotations = ((n, k) for n in SCENE_GRIDS for k in range(0, len(negative_images), n * n))
        negative_scenes = [compose_grid(negative_images[k:] + negative_images[:k], n, SCENE_SIDE)
                           for n, k in itertools.islice(rotations, 8)] if use_scenes else []
        negative_feats = negative_feats + self.embed(negative_scenes)
        negatives = [object_score(g, embeddings, box_features, scoring) for g in negative_feats]
        return positives, negatives

    def enroll(self, name: str, photos: Sequence[str | os.PathLike | Image.Image], category: str = "",
               negatives: Sequence[str | os.PathLike | Image.Image] = (),
               masks: Sequence[np.ndarray] | None = None) -> Prototype:
        """Make a prototype and add it to the bundle's store on disk (locked read-modify-write)."""
        prototype = self.make_prototype(name, photos, category, negatives, masks)
        self._save([prototype])
        return prototype

    def enroll_all(self, objects: Sequence[tuple[str, Sequence[str | os.PathLike | Image.Image], str,
                                                 Sequence[str | os.PathLike | Image.Image]]]) -> list[Prototype]:
        """Enrol several objects, each (name, photos, category, negatives), at once: each is
        calibrated against its negatives and *every* other object (given or already stored), then
        the store is saved once. One `enroll` after another would calibrate the first object
        without the later ones, so a frame of the user's second dog could be called the first."""
        photos_of = {name: _as_images(photos) for name, photos, _, _ in objects}
        stored = {o.name: stored_photos(o) for o in self.store.objects.values() if o.name not in photos_of}
        everyone = {**stored, **{name: [_as_stored(im) for im in ims] for name, ims in photos_of.items()}}
        prototypes = [self.make_prototype(name, photos_of[name], category, negatives,
                                          others=[im for other, ims in everyone.items() if other != name for im in ims])
                      for name, _, category, negatives in objects]
        self._save(prototypes)
        return prototypes

    def _save(self, prototypes: Sequence[Prototype]) -> None:
        """Add prototypes to the bundle's store on disk (locked read-modify-write, atomic save)."""
        path = self.bundle.store_path
        with locked(path):
            if path.exists():
                self.store = PrototypeStore.load(path, self.bundle.model_sha256)
            for prototype in prototypes:
                self.store.add(prototype)
            self.store.save(path)


def over_references(similarities: np.ndarray, scoring: str = "mean") -> np.ndarray:
    """Cosines to one object's references (last axis) -> the object's: their mean under scoring
    "mean", the best one under "region" and "global" (objects enrolled before "mean")."""
    return similarities.mean(axis=-1) if scoring == "mean" else similarities.max(axis=-1)


def per_object(similarities: np.ndarray, offsets: np.ndarray, rules: Sequence[str]) -> np.ndarray:
    """over_references for many objects at once: cosines [..., sum K] to every object's references
    stacked (object i's start at offsets[i]) -> [..., objects], each by its own scoring rule."""
    sizes = np.diff(np.append(offsets, similarities.shape[-1]))
    means = np.add.reduceat(similarities, offsets, axis=-1) / sizes.astype(similarities.dtype)
    return np.where([r == "mean" for r in rules], means, np.maximum.reduceat(similarities, offsets, axis=-1))


def combined_score(global_score: float, region_score: float, scoring: str = "mean") -> float:
    """The score `present` is judged on: the larger of the two, or the global one for objects
    enrolled before region scoring (their threshold was calibrated on it)."""
    return global_score if scoring == "global" else max(global_score, region_score)


def claimed_places(best_windows: np.ndarray, global_scores: np.ndarray, region_scores: np.ndarray,
                   rules: Sequence[str], grid_hw: tuple[int, int]) -> np.ndarray:
    """Where each object's score says it is, in grid cells [J, 4]: its best window where the region
    score decided (region > global), else the whole frame (the global embedding decided)."""
    h, w = grid_hw
    by_region = (np.asarray(region_scores) > np.asarray(global_scores)) & np.array([r != "global" for r in rules])
    return np.where(by_region[:, None], best_windows, np.array([0, 0, w, h]))


def one_claim_per_place(scores: np.ndarray, present: np.ndarray, windows: np.ndarray,
                        categories: Sequence[str], overlap: float = SAME_PLACE,
                        at_place: np.ndarray | None = None) -> np.ndarray:
    """Which of the user's look-alikes a place in the frame shows. For J objects' scores [J], their
    `present` at their own thresholds [J] and their places [J, 4] (claimed_places: x0, y0, x1, y1):
    for each object the index of a present object of the same category that scores higher (ties:
    the earlier one) and claims its place, else -1. k claims i's place when their places overlap
    (intersection >= `overlap` of the smaller place) or, given `at_place` [J, J] (at_place[i, k]:
    k's score at i's place, its window score in i's best window), when k scores at least i's own
    score there (on a photo that is all one cat, the two cats' best windows need not overlap, yet
    in the other cat's window this cat still scores higher). An object with such a rival is not
    present: the user's two cats can both be in a photo, in two places, but one cat is not both of
    them. Every pair is judged on its own (no greedy order), so the result does not depend on the
    order objects were enrolled in."""
    present = np.asarray(present, bool)
    rival = np.full(len(present), -1)
    over = np.flatnonzero(present)  # only objects over their thresholds compete: few, however many are enrolled
    scores, windows = np.asarray(scores, float)[over], np.asarray(windows, float).reshape(-1, 4)[over]
    claims_by_score = (np.zeros((len(over), len(over)), bool) if at_place is None else
                       np.asarray(at_place, float)[np.ix_(over, over)] >= scores[:, None])
    x0 = np.maximum(windows[:, None, 0], windows[None, :, 0])
    y0 = np.maximum(windows[:, None, 1], windows[None, :, 1])
    x1 = np.minimum(windows[:, None, 2], windows[None, :, 2])
    y1 = np.minimum(windows[:, None, 3], windows[None, :, 3])
    intersection = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])
    same_place = (intersection >= overlap * np.minimum(area[:, None], area[None, :])) | claims_by_score
    beats = (scores[None, :] > scores[:, None]) | ((scores[None, :] == scores[:, None])
                                                   & (over[None, :] < over[:, None]))
    kin = np.array([categories[i] for i in over])
    rivals = same_place & beats & (kin[:, None] == kin[None, :])  # [i, k]: k takes i's place
    if len(over):
        best = np.where(rivals, scores[None, :], -np.inf).argmax(axis=1)
        rival[over] = np.where(rivals.any(axis=1), over[best], -1)
    return rival


def object_score(features: ImageFeatures, embeddings: np.ndarray, box_features: np.ndarray,
                 scoring: str = "mean") -> float:
    """One photo's score for one object from its references' arrays, as `classify` computes it."""
    windows, _ = dense.region_windows(features.grid)
    return combined_score(float(over_references(embeddings @ features.embedding, scoring)),
                          float(over_references(windows @ box_features.T, scoring).max()), scoring)


def scene_with(photo: Image.Image, fillers: Sequence[Image.Image], n: int, offset: int = 0) -> Image.Image:
    """An n x n scene: `photo` in cell (offset mod n*n), fillers (cycled from `offset`) elsewhere."""
    k = n * n
    cells = [fillers[(offset + j) % len(fillers)] for j in range(k - 1)]
    cells.insert(offset % k, photo)
    return compose_grid(cells, n, SCENE_SIDE)


def _as_images(items: Sequence[str | os.PathLike | Image.Image]) -> list[Image.Image]:
    return [im if isinstance(im, Image.Image) else load_image(im) for im in items]


def _jpeg(image: Image.Image) -> bytes:
    image = image.copy()
    image.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stored_photos(prototype: Prototype) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in prototype.photos]


def _as_stored(image: Image.Image) -> Image.Image:
    """A photo as the store will keep it (downscaled JPEG): what later enrolments calibrate on."""
    return Image.open(io.BytesIO(_jpeg(image))).convert("RGB")


TINTS = ((255, 40, 40), (40, 110, 255), (40, 220, 60))  # red, blue, green: the mask takes the one
# farthest from the object's own mean colour, so a red mug is not tinted red


def overlay(photo: Image.Image, match: Match, path: Path) -> Path:
    """Write the photo with the mask tinted (in a colour that stands out from the object), its
    outline, the box, and the object's name and score (for people to look at)."""
    annotate(photo, [match]).save(path)
    return path


def annotate(photo: Image.Image, matches: Sequence[Match]) -> Image.Image:
    """The photo with each match's mask tinted, outlined, boxed and labelled (overlays, video frames)."""
    from PIL import ImageDraw, ImageFont

    canvas = photo.convert("RGB").copy()
    line = max(2, canvas.width // 200)
    font = ImageFont.load_default(size=max(12, canvas.width // 40))
    for match in matches:
        if match.mask is not None and match.mask.any():
            mean = np.asarray(canvas, dtype=np.float32)[match.mask].mean(axis=0)
            tint = max(TINTS, key=lambda c: float(np.abs(np.asarray(c) - mean).sum()))
            where = Image.fromarray(match.mask.astype(np.uint8) * 255)
            canvas = Image.composite(Image.blend(canvas, Image.new("RGB", canvas.size, tint), 0.45), canvas, where)
            edge = match.mask & ~dense.erode(match.mask)
            canvas.paste(Image.new("RGB", canvas.size, tint), mask=Image.fromarray(edge.astype(np.uint8) * 255))
        draw = ImageDraw.Draw(canvas)
        if match.box is not None:
            draw.rectangle(match.box, outline=(40, 255, 40), width=line)
        x, y = (match.box[0], match.box[1]) if match.box is not None else (0, 0)
        label = f"{match.name} {match.score:.2f}" + ("" if match.present else " (absent)")
        left, top, right, bottom = draw.textbbox((x + line, y + line), label, font=font)
        draw.rectangle((left - line, top - line, right + line, bottom + line), fill=(0, 0, 0))
        draw.text((x + line, y + line), label, fill=(255, 255, 255), font=font)
    return canvas
