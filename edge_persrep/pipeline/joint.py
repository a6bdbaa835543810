"""Joint personalization: several of a user's things in one LoRA, one bundle, one model run per frame.

    edge-persrep personalize --object rex=photos/rex --object bella=photos/bella --category dog \\
        --negatives photos/other_dogs --out RUN
    edge-persrep personalize --add max=photos/max --out RUN        # later: one more object

RUN/
  joint.json          the objects (name, category, photos), the current generation and the settings;
                      written last, so it always names a finished bundle
  objects/<name>/     each object's own preparation and synthesis (a `personalize` run directory
                      without its training: photos, negatives, synth/), resumable per object
  train-<g>/          generation g's LoRA: 0 for the first run, one more for each --add (the
                      previous generation's adapter is where training continues from)
  bundle/             the exported model with every object enrolled; replaced whole (staged beside
                      it, then swapped in) only when a generation has finished
Training: each batch row draws an object, then its anchor and a positive; the InfoNCE negatives
are the user's negatives, each object's generated same-category negatives (joint_negatives) and
the other objects' positives in the batch (contrastive.info_nce `owners`), so the user's two
dogs are told apart from each other and from other dogs. Enrolment calibrates each object against
the negatives and all the other objects' photos (Finder.enroll_all).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from ..export.bundle_writer import swap_into_place
from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json
from ..runtime.finder import Finder
from ..runtime.images import load_image
from ..server_side.contrastive import load_adapter, train
from ..server_side.options import DEFAULT_BACKBONE, DEFAULT_PRESET, DEFAULT_SYNTH
from .bundles import export_bundle
from .personalize import prepare, synthesise
from .request import PersonalizeRequest
from .run_dir import RunDir, finished_bundle, finished_training

JOINT_FILE = "joint.json"
# The LoRA is merged as trained: the quick preset's merge_scale (1.5) was chosen on single-object
# runs; on the joint benchmark's validation groups (seed 1) 1.5 was no better than 1 (mean AP 0.839
# against 0.840, `present` 0.887 against 0.890, called on another member 0.076 against 0.056;
# README "Taking the update further").
JOINT_MERGE_SCALE = 1.0


@dataclass(frozen=True)
class JointObject:
    name: str
    photos: Path  # a folder (or one photo)
    category: str


def parse_object(value: str, category: str) -> JointObject:
    """`NAME=DIR` or `NAME:CATEGORY=DIR` (the --object / --add syntax)."""
    key, sep, path = value.partition("=")
    name, _, own_category = key.partition(":")
    if not sep or not name or not path:
        raise EdgePersrepError(f"--object {value}: use NAME=DIR (or NAME:CATEGORY=DIR), e.g. rex=photos/rex")
    if not (own_category or category):
        raise EdgePersrepError(f"--object {value}: no category; pass --category or NAME:CATEGORY=DIR")
    return JointObject(name, Path(path), own_category or category)


@dataclass(frozen=True)
class JointRequest:
    objects: Sequence[JointObject]
    out: Path
    negatives: Sequence[Path] = ()
    backbone: str = DEFAULT_BACKBONE
    synth_method: str = DEFAULT_SYNTH
    preset: str = DEFAULT_PRESET
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    train_precision: str = "auto"  # options.TRAIN_PRECISION_CHOICES

    def for_object(self, obj: JointObject) -> PersonalizeRequest:
        return PersonalizeRequest([obj.photos], obj.name, obj.category, self.out / "objects" / obj.name,
                                  negatives=list(self.negatives), backbone=self.backbone,
                                  synth_method=self.synth_method, preset=self.preset, steps=self.steps,
                                  seed=self.seed, device=self.device, train_precision=self.train_precision)


def personalize_joint(request: JointRequest) -> Path:
    """Every object into one LoRA and one bundle (generation 0); a rerun resumes."""
    names = [o.name for o in request.objects]
    if len(set(names)) != len(names) or len(names) < 2:
        raise EdgePersrepError("a joint run needs at least two objects with different names")
    if (request.out / JOINT_FILE).is_file() and _read(request.out)["objects"] != _objects_record(request.objects):
        raise EdgePersrepError(f"{request.out}: a joint run with other objects; add one with --add, or use a new --out")
    return _generation(request, generation=0, start_from=None)


def add_object(run: Path, obj: JointObject, steps: int | None = None) -> Path:
    """One more object in an existing joint run: training continues from the current LoRA on all
    objects, every object is re-enrolled under the new model, and the bundle is swapped only when
    all of that has finished (until then the old bundle keeps working)."""
    joint = _read(run)
    if obj.name in [o["name"] for o in joint["objects"]]:
        raise EdgePersrepError(f"{run}: '{obj.name}' is already in this joint run")
    objects = [JointObject(o["name"], Path(o["photos"]), o["category"]) for o in joint["objects"]] + [obj]
    settings = joint["settings"]
    request = JointRequest(objects, run, [Path(p) for p in settings["negatives"]], settings["backbone"],
                           settings["synth_method"], settings["preset"], settings["steps"], settings["seed"],
                           settings["device"], settings.get("train_precision", "fp32"))  # runs before it: fp32
    g = joint["generation"]
    return _generation(request, generation=g + 1, start_from=run / f"train-{g}" / "adapter", train_steps=steps)


def _generation(request: JointRequest, generation: int, start_from: Path | None,
                train_steps: int | None = None) -> Path:
    """Prepare and synthesise each object (the run's own settings, so earlier objects resume),
    train generation `generation` (`train_steps`: this generation's, default the run's), export,
    enrol every object, swap the bundle in, and write joint.json."""
    started = time.time()
    plans, runs, prepared, data = [], [], [], []
    for obj in request.objects:  # 1-2: each object's preparation and synthesis, as `personalize` does them
        plan = request.for_object(obj).plan()
        run = RunDir(plan.request.out)
        ready = prepare(plan, run, {})
        plans.append(plan)
        runs.append(run)
        prepared.append(ready)
        data.append(synthesise(plan, run, ready))
        run.write(ready.record)
    model = prepared[0].model  # 3: one LoRA for all
    train_dir = request.out / f"train-{generation}"
    if finished_training(train_dir):
        load_adapter(model, train_dir / "adapter")
        summary = json.loads((train_dir / "summary.json").read_text())
    else:
        anchors = [load_image(p) for ready in prepared for p in ready.reference]
        owners = ([k for k, ready in enumerate(prepared) for _ in ready.reference],
                  [k for k, d in enumerate(data) for _ in d.positives])
        config = replace(plans[0].train_config, merge_scale=JOINT_MERGE_SCALE)
        if train_steps is not None:
            config = replace(config, triplets=train_steps * config.batch_size, epochs=1)
        summary = train(model, anchors, [p for d in data for p in d.positives],
                        joint_negatives([ready.negatives for ready in prepared], [d.negatives for d in data]),
                        config, train_dir, device=plans[0].device, owners=owners, start_from=start_from)
    summary = {**summary, "objects": [o.name for o in request.objects], "generation": generation}
    if _committed(request.out, generation, request.objects) and finished_bundle(request.out / "bundle",
                                                                                 summary["objects"], summary):
        return request.out / "bundle"  # a rerun of a finished generation: nothing to export or enrol again

    staging = request.out / f".bundle-{generation}"  # 4: export and enrol beside the live bundle
    shutil.rmtree(staging, ignore_errors=True)
    export_bundle(model, staging, prepared[0].reference, summary, force=True)
    Finder.open(staging).enroll_all([(obj.name, ready.reference, obj.category, d.enrolment_negatives)
                                     for obj, ready, d in zip(request.objects, prepared, data)])
    swap_into_place(staging, request.out / "bundle")
    atomic_write_json(request.out / JOINT_FILE, {  # the commit point: it names the bundle just swapped in
        "objects": _objects_record(request.objects), "generation": generation,
        "settings": {**{k: v for k, v in asdict(request).items() if k not in ("objects", "out")},
                     "negatives": [str(p) for p in request.negatives]},
        "training": {k: summary.get(k) for k in ("steps", "seconds", "loss_last10_mean", "continued_from")},
        "seconds": round(time.time() - started, 1)})
    return request.out / "bundle"


def joint_negatives(user: Sequence[Sequence[Path]], trained: Sequence[Sequence[Path]]) -> list[Path]:
    """What a joint run trains against, from each object's run: `user`[k], its copies of the user's
    negatives (the same photos for every object: one --negatives for the run), and `trained`[k],
    what its own run would train against (those copies, then what synthesis generated for its
    category). The user's negatives once, then every object's generated ones: objects of
    different categories each bring their own same-category negatives (with the Stable Diffusion
    methods), and the user's photos are not counted N times."""
    shared = list(user[0]) if user else []
    for own, mine in zip(user, trained):
        if list(mine[:len(own)]) != list(own):
            raise ValueError(f"an object's training negatives do not start with its copies of the user's: {mine[:1]}")
    return shared + [p for own, mine in zip(user, trained) for p in mine[len(own):]]


def _committed(run: Path, generation: int, objects: Sequence[JointObject]) -> bool:
    """joint.json names this generation of these objects: its bundle was swapped in."""
    path = Path(run) / JOINT_FILE
    if not path.is_file():
        return False
    joint = json.loads(path.read_text())
    return joint["generation"] == generation and joint["objects"] == _objects_record(objects)


def _objects_record(objects: Sequence[JointObject]) -> list[dict]:
    return [{"name": o.name, "photos": str(o.photos), "category": o.category} for o in objects]


def _read(run: Path) -> dict:
    path = Path(run) / JOINT_FILE
    if not path.is_file():
        raise EdgePersrepError(f"{run}: not a joint run (no {JOINT_FILE}); make one with --object NAME=DIR ...")
    return json.loads(path.read_text())
