"""What a user asks `personalize` for (`PersonalizeRequest`), and the checked plan made from it.

The request holds the user's choices and owns their defaults; `plan()` resolves the rest (device,
training preset, Stable Diffusion options) and runs every check that can fail, so a typo or a bad
photo is refused in a second, not after an hour of generation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..runtime.errors import EdgePersrepError
from ..runtime.images import list_images, load_image, refuse_duplicates
from ..server_side import synth
from ..server_side.backbones import BackboneSource
from ..server_side.contrastive import TrainConfig, get_preset, resolve_precision
from ..server_side.options import CALIBRATE_ON, DEFAULT_BACKBONE, DEFAULT_PRESET, DEFAULT_SYNTH
from .run_dir import RunDir

if TYPE_CHECKING:
    import numpy as np

    from ..server_side.synth.personalized_generation import DiffusionOptions

DIFFUSION_POSITIVES = 450  # paper: ~450 generated positives per object, whatever the training preset


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgePersrepError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise EdgePersrepError(f"--device {device}: use auto, cpu or cuda")
    return device


@dataclass(frozen=True)
class PersonalizeRequest:
    """`edge-persrep personalize`, typed: the object, where the run goes, and how to make it."""

    photos: Sequence[Path]  # photos of the object, or folders of them
    name: str  # what the object is called in the bundle
    category: str  # e.g. dog, mug, sneaker
    out: Path  # the run directory (resumable; the bundle in OUT/bundle)
    negatives: Sequence[Path] = ()  # folders of photos of other objects of the same category
    others: Path | None = None  # a bundle whose enrolled objects serve as negatives too
    calibrate_on: str = CALIBRATE_ON[0]  # which negatives calibrate `present` (server_side.negatives)
    backbone: str = DEFAULT_BACKBONE
    weights: Path | None = None  # a local weights file instead of the packaged / hub weights
    synth_method: str = DEFAULT_SYNTH  # synth.GENERATORS
    synth_data: Path | None = None  # a finished `edge-persrep synth` output instead of generating
    masks: Path | None = None  # folder of object masks named like the photos
    backgrounds: Path | None = None  # cutpaste's backgrounds (default: the training negatives)
    diffusion: DiffusionOptions | None = None  # the Stable Diffusion methods' options
    positives: int | None = None  # None: 450 for the Stable Diffusion methods, else the preset's
    preset: str = DEFAULT_PRESET
    steps: int | None = None  # overrides the preset's number of training steps
    train_precision: str = "auto"  # options.TRAIN_PRECISION_CHOICES; the run records what auto chose, and a
    # rerun with auto keeps what the run in `out` was started with (so a run from an earlier version resumes)
    device: str = "auto"
    seed: int = 0
    force: bool = False  # start a run with other settings over, or write into a non-run folder

    @property
    def generates_with_diffusion(self) -> bool:
        return self.synth_method in synth.DIFFUSION_METHODS and self.synth_data is None

    def plan(self) -> "Plan":
        """Every check that can fail, before any long work: the backbone and its weights, the
        photos, masks, negatives, synthesis options and the output folder."""
        source = BackboneSource.given(self.backbone, self.weights)
        if self.calibrate_on not in CALIBRATE_ON:
            raise EdgePersrepError(f"--calibrate-on {self.calibrate_on}: use {' or '.join(CALIBRATE_ON)}")
        if self.synth_method not in synth.GENERATORS:
            raise EdgePersrepError(f"unknown synthesis method '{self.synth_method}'; choose one of: "
                                   f"{', '.join(synth.GENERATORS)}")
        device = resolve_device(self.device)
        photos = list_images(self.photos)
        for p in photos:
            load_image(p)  # every bad photo is refused now
        refuse_duplicates(photos)
        masks = synth.match_masks(photos, Path(self.masks)) if self.masks else None
        mask_arrays = synth.read_masks(photos, masks) if masks else None
        if self.synth_method in synth.METHODS_NEEDING_MASKS and not masks:
            raise EdgePersrepError(f"--synth {self.synth_method} needs --masks DIR (one PNG per photo, white = object)")
        if not self.negatives and self.others is None and self.synth_method not in synth.DIFFUSION_METHODS:
            raise EdgePersrepError("no negatives: pass --negatives DIR (photos of other objects of the same "
                                   "category) or --others BUNDLE (objects already enrolled)")
        train_config = self._train_config(device)
        diffusion = self._diffusion(device)
        if diffusion is not None:
            from ..server_side.synth.personalized_generation import check_request

            check_request(synth.SynthRequest(photos, self.category, self.out / "synth", count=train_config.positives,
                                             masks=masks, diffusion=diffusion), self.synth_method)
        given_data = None
        if self.synth_data is not None:
            from ..server_side.synth.personalized_generation import read_synth_data

            given_data = read_synth_data(Path(self.synth_data), self.category)
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not (out / "run.json").is_file() and not self.force:
            raise EdgePersrepError(f"{out}: exists, is not empty and is not a run directory; choose another --out "
                                   "or pass --force")
        return Plan(self, device, source, train_config, diffusion, photos, masks, mask_arrays, given_data)

    def _train_config(self, device: str) -> TrainConfig:
        precision = self.train_precision
        if precision == "auto":
            precision = RunDir(self.out).recorded_precision() or precision
        config = get_preset(self.preset, seed=self.seed)
        config = replace(config, precision=resolve_precision(precision, device, config.cache_trunk))
        if self.steps is not None:
            config = replace(config, triplets=self.steps * config.batch_size, epochs=1)
        positives = self.positives
        if positives is None and self.generates_with_diffusion:
            positives = DIFFUSION_POSITIVES
        return config if positives is None else replace(config, positives=positives)

    def _diffusion(self, device: str) -> DiffusionOptions | None:
        """The Stable Diffusion options this run generates with (None: it does not), on this
        run's device, filtering with this run's backbone."""
        if not self.generates_with_diffusion:
            return None
        from ..server_side.synth.personalized_generation import DiffusionOptions

        return replace(self.diffusion or DiffusionOptions(), device=device, filter_backbone=self.backbone,
                       filter_weights=self.weights)


@dataclass(frozen=True)
class Plan:
    """A checked request with everything resolved; the stages of `personalize` read only this."""

    request: PersonalizeRequest
    device: str
    source: BackboneSource
    train_config: TrainConfig
    diffusion: DiffusionOptions | None  # None: no Stable Diffusion generation in this run
    photos: list[Path]
    masks: list[Path] | None
    mask_arrays: list[np.ndarray] | None = field(repr=False)
    synth_data: synth.SynthResult | None  # a given `edge-persrep synth` output
