"""A run directory: what `personalize` made, how, and what a rerun may reuse.

    run.json        what was asked (name, category, backbone + weights sha256, synth, preset, seed,
                    photo and negative digests) + versions + timings + the calibration split
    photos/         the reference photos (copies, downscaled); masks/ their masks, if given
    found_masks/    the masks foreground discovery found (synth `context` without --masks)
    negatives/      the training negatives; calibration/ the ones held out of training to calibrate
                    `present` (server_side.negatives)
    synth/          the generator's positives and manifest (resumes image by image)
    train/          adapter/ (peft LoRA, safetensors), loss.json, summary.json
    bundle/         the exported bundle with the object enrolled
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_bytes, atomic_write_json
from ..runtime.finder import Finder
from ..runtime.images import input_batch, load_image
from ..server_side.contrastive import TrainConfig
from ..server_side.negatives import generated_holdout

COPY_SIDE = 768  # photos copied into the run directory are downscaled to this long side
ENROLL_GENERATED_NEGATIVES = 32  # at most this many generated negatives are held out of training to calibrate
RESUME_KEYS = ("name", "backbone", "weights_sha256", "synth", "calibrate_on", "preset", "seed", "photo_sha256",
               "negatives", "train_config", "diffusion", "synth_data")


def same_json(a, b) -> bool:
    """Equal as they read back from JSON (tuples are lists there, dict order does not count)."""
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def with_new_defaults(key: str, value):
    """A recorded setting as this version writes it: a train_config recorded before a field existed
    ran with that field's default (e.g. `precision`, added later: fp32), so it is filled in and the
    run still resumes."""
    if key == "train_config" and isinstance(value, dict):
        return {**{f.name: f.default for f in fields(TrainConfig)}, **value}
    return value


def copy_name(index: int, path: Path) -> str:
    return f"{index:03d}_{path.stem}.jpg"


def save_copy(image: Image.Image, target: Path) -> None:
    """The run's copy of an input image: upright RGB JPEG, downscaled to COPY_SIDE."""
    image = image.copy()
    image.thumbnail((COPY_SIDE, COPY_SIDE), Image.BICUBIC)
    save_atomic(image, target, format="JPEG", quality=92)


def save_atomic(image: Image.Image, target: Path, **save_options) -> None:
    """A killed run leaves the old file or the new one, never half of one (a rerun reuses it)."""
    buffer = io.BytesIO()
    image.save(buffer, **save_options)
    atomic_write_bytes(target, buffer.getvalue())


class RunDir:
    """Owns a run's paths, its run.json and the resume rule: a rerun with the same settings
    reuses every finished stage; with other settings it is refused, or started over with force."""

    STAGES = ("photos", "masks", "negatives", "calibration", "synth", "train", "bundle")

    def __init__(self, root: Path):
        self.root = Path(root)
        self.run_json = self.root / "run.json"
        self.photos, self.masks = self.root / "photos", self.root / "masks"
        self.found_masks = self.root / "found_masks"
        self.negatives, self.calibration = self.root / "negatives", self.root / "calibration"
        self.synth, self.train, self.bundle = self.root / "synth", self.root / "train", self.root / "bundle"

    @classmethod
    def existing(cls, root: Path) -> "RunDir":
        """A finished (or started) run, for export; refuses a folder that is not one."""
        run = cls(root)
        if not run.run_json.is_file():
            raise EdgePersrepError(f"{root}: not a run directory (no run.json); pass the --out of `personalize`")
        return run

    def read(self) -> dict:
        return json.loads(self.run_json.read_text())

    def recorded_seconds(self) -> float:
        """The run's wall time as run.json records it: its stages, summed over the invocations that
        made them (a resumed run keeps what its finished stages cost)."""
        return round(sum((self.read().get("timings") or {}).values()), 1)

    def recorded_precision(self) -> str | None:
        """The training precision this run was started with (None: no run here yet); runs from
        before the setting existed trained in fp32."""
        if not self.run_json.is_file():
            return None
        return with_new_defaults("train_config", self.read().get("train_config") or {})["precision"]

    def write(self, record: dict) -> None:
        atomic_write_json(self.run_json, record)

    def resume(self, record: dict, force: bool) -> dict[str, float]:
        """Before anything in the run is reused or overwritten: a run made with other settings is
        refused (resuming would mix them), or with `force` its stages are deleted. Returns the stage
        timings recorded so far for what is kept ({} for a new run or one started over)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.run_json.is_file():
            return {}
        old = self.read()
        changed = [k for k in RESUME_KEYS if not same_json(with_new_defaults(k, old.get(k)), record[k])]
        if not changed:
            return dict(old.get("timings") or {})
        if not force:
            raise EdgePersrepError(f"{self.root}: this run was made with other settings ({', '.join(changed)}); "
                                   "resuming it would mix them. Use a new --out, or --force to start this run over")
        for stage in self.STAGES:
            shutil.rmtree(self.root / stage, ignore_errors=True)
        return {}

    # --- the inputs, copied in: the run owns them ----------------------------------------------

    def copy_photos(self, paths: Sequence[Path]) -> list[Path]:
        self.photos.mkdir(parents=True, exist_ok=True)
        copies = []
        for i, path in enumerate(paths):
            target = self.photos / copy_name(i, path)
            if not target.exists():
                save_copy(load_image(path), target)
            copies.append(target)
        return copies

    def copy_masks(self, masks: Sequence, reference: Sequence[Path], folder: Path | None = None) -> list[Path]:
        """Masks resized (nearest) to the run's photo copies, saved as PNG in `folder` (masks/)."""
        folder = self.masks if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        copies = []
        for mask, photo in zip(masks, reference):
            target = folder / f"{photo.stem}.png"
            size = Image.open(photo).size
            save_atomic(Image.fromarray(mask.astype("uint8") * 255).resize(size, Image.NEAREST), target, format="PNG")
            copies.append(target)
        return copies

    @staticmethod
    def save_negatives(images: Sequence[Image.Image], indices: Sequence[int], folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in indices:
            target = folder / f"{i:04d}.jpg"
            if not target.exists():
                save_copy(images[i], target)
            paths.append(target)
        return paths

    # --- what later stages and `export RUN` read back ------------------------------------------

    def reference(self) -> list[Path]:
        return sorted(self.photos.glob("*.jpg"))

    def trained(self) -> bool:
        return finished_training(self.train)

    def training_summary(self) -> dict | None:
        path = self.train / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def finished_bundle(self, name: str, training: dict) -> bool:
        return finished_bundle(self.bundle, [name], training)

    def enrolment_negatives(self, record: dict | None = None) -> list[Path]:
        """The negatives the run's object is calibrated on (as `personalize` chose them)."""
        calibrate_on = (record or self.read()).get("calibrate_on", "training")
        return split_negatives(sorted(self.negatives.glob("*.jpg")), sorted(self.calibration.glob("*.jpg")),
                               sorted((self.synth / "negatives").glob("*.jpg")), calibrate_on)[1]

    def int8_calibration(self, size: int):
        """int8 calibration and gate images, disjoint: even-indexed synthetic positives and negatives
        (the user's, held out or not, in their given order, then generated) calibrate; the reference
        photos, odd-indexed positives and negatives check."""
        from ..export.precision import CheckSet

        positives = sorted((self.synth / "positives").glob("*.jpg"))
        user_negatives = [*self.negatives.glob("*.jpg"), *self.calibration.glob("*.jpg")]
        negatives = (sorted(user_negatives, key=lambda p: p.name) + sorted((self.synth / "negatives").glob("*.jpg")))
        calibration = input_batch(positives[0::2][:64] + negatives[0::2][:32], size)
        checks = CheckSet(input_batch(self.reference(), size), input_batch(positives[1::2][:32], size),
                          input_batch(negatives[1::2][:32], size))
        return calibration, checks


def finished_training(train_dir: Path) -> bool:
    """A training folder whose run ended: its summary and its saved adapter are both there."""
    return (train_dir / "summary.json").is_file() and (train_dir / "adapter" / "adapter_config.json").is_file()


def finished_bundle(bundle: Path, names: Sequence[str], training: dict) -> bool:
    """A bundle is finished if it loads (manifest, checksums), holds this training's model and has
    every one of `names` enrolled."""
    if not (bundle / "bundle.json").is_file():
        return False
    try:
        finder = Finder.open(bundle)
    except EdgePersrepError:
        return False  # half-written or damaged: export again
    return same_json(finder.bundle.manifest.get("training"), training) and all(n in finder.store.objects for n in names)


def split_negatives(negatives: list[Path], calibration: list[Path], generated: Sequence[Path],
                    calibrate_on: str) -> tuple[list[Path], list[Path]]:
    """Training negatives (the user's kept ones + generated ones) and enrolment calibration negatives.
    `held-out`: the user's held-out ones + a few held-out generated ones; with nothing held out (too
    few negatives) enrolment calibrates on the training negatives, as the run's record says.
    `training`: the user's negatives + the first generated ones, all also trained against."""
    if calibrate_on == "training":
        return negatives + list(generated), negatives + list(generated[:ENROLL_GENERATED_NEGATIVES])
    kept, held = generated_holdout(len(generated), ENROLL_GENERATED_NEGATIVES)
    train_negatives = negatives + [generated[i] for i in kept]
    enroll_negatives = calibration + [generated[i] for i in held]
    return train_negatives, enroll_negatives or train_negatives
