"""The per-object design, served by the runtime: one ONNX Runtime session on the LoRA base graph,
each object's adapter switched in for its own model run.

A joint bundle answers every object from one model run per frame. Objects personalized one at a
time (`personalize` per object, then `export-adapter RUN --out ADAPTER`) each have their own model;
instead of N sessions of 13 MB each, `PerObjectFinder` loads the shared base graph once
(`lora_base.onnx`, the same for every object trained with the same backbone and LoRA settings) and
each object's 1 MB adapter, and runs the base N times a frame, each time with one adapter active
(`RunOptions.add_active_adapter`: no new session, no measurable switch cost). Each object is
answered by a Finder over its own run's bundle, so its scores and decisions are those of its
merged model (min cosine 1.0 between the two, tests/test_variants.py).

    finder = PerObjectFinder.open([("runs/rex/bundle", "adapters/rex"), ("runs/bella/bundle", "adapters/bella")])
    matches = finder.find(photo)          # N model runs; one Match per object
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .bundle import Bundle, make_session
from .errors import BundleError
from .files import sha256_file
from .finder import Finder, ImageFeatures, Match
from .images import load_image, resize_to_input

ADAPTER_INFO = "adapter_info.json"


def run_with_adapter(session, adapter_path: Path | None, batch: np.ndarray):
    """One run of a LoRA base session with the adapter at `adapter_path` active (None: the base
    graph alone, which is the pretrained model): [embeddings, patch grids]."""
    return AdapterSession(session, adapter_path).run(["embedding", "patch_grid"], {"image": batch})


class AdapterSession:
    """A base session seen through one adapter: the `run` / `get_inputs` / `get_providers` a
    Bundle asks of its ONNX Runtime session, every run with the adapter active."""

    def __init__(self, base, adapter_path: Path | None):
        import onnxruntime as ort

        self.base = base
        self.options = ort.RunOptions()
        if adapter_path is not None:
            adapter = ort.LoraAdapter()
            adapter.Load(str(adapter_path))
            self.options.add_active_adapter(adapter)
            self.adapter = adapter  # kept alive as long as the options refer to it

    def run(self, outputs, feeds, options=None):
        return self.base.run(outputs, feeds, options or self.options)

    def get_inputs(self):
        return self.base.get_inputs()

    def get_providers(self):
        return self.base.get_providers()


def read_adapter_info(folder: Path) -> dict:
    """An adapter folder's record, its base graph and adapter checked against their sha256."""
    path = Path(folder) / ADAPTER_INFO
    fix = "make it again with `edge-persrep export-adapter RUN --out FOLDER`"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        files, size = info["files"], int(info["onnxruntime_adapter"]["input_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: not a readable adapter record ({exc}); {fix}") from exc
    for name in ("lora_base.onnx", "object.onnx_adapter"):
        if not (Path(folder) / name).is_file() or sha256_file(Path(folder) / name) != files.get(name):
            raise BundleError(f"{Path(folder) / name}: missing or not the file {ADAPTER_INFO} lists; {fix}")
    info["input_size"] = size
    return info


class PerObjectFinder:
    """Several objects, each with its own run's bundle (merged model + store) and adapter folder,
    answered from one shared base session: N model runs a frame for N objects."""

    def __init__(self, finders: Sequence[Finder]):
        self.finders = list(finders)

    @classmethod
    def open(cls, objects: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
             providers: list[str] | None = None) -> "PerObjectFinder":
        """`objects`: (bundle folder, adapter folder) per object. Every adapter must plug into the
        same base graph (checked by its sha256), which is loaded once."""
        infos = [read_adapter_info(Path(a)) for _, a in objects]
        bases = {info["files"]["lora_base.onnx"] for info in infos}
        if len(bases) != 1:
            raise BundleError(f"{', '.join(str(a) for _, a in objects)}: the adapters plug into {len(bases)} "
                              "different base graphs (other backbones or LoRA settings); serve those separately")
        first = Path(objects[0][1])
        base = make_session(first / "lora_base.onnx", providers)
        finders = []
        for (bundle_dir, adapter_dir), info in zip(objects, infos):
            bundle = Bundle.load(bundle_dir)
            if bundle.input_size != info["input_size"]:
                raise BundleError(f"{adapter_dir}: made for {info['input_size']} px input, {bundle_dir} takes "
                                  f"{bundle.input_size} px; export the adapter from that bundle's run")
            bundle.use_session(AdapterSession(base, Path(adapter_dir) / "object.onnx_adapter"))
            finders.append(Finder(bundle))
        return cls(finders)

    def find(self, photo: Image.Image | str | os.PathLike, task: str = "all") -> list[Match]:
        """Every object's answer: the photo resized once, then one model run per object, with its adapter."""
        image = photo if isinstance(photo, Image.Image) else load_image(photo)
        batch = resize_to_input(image, self.finders[0].bundle.input_size)[None]
        matches = []
        for f in self.finders:
            embeddings, grids = f.bundle.run(batch)
            matches += f.find(ImageFeatures(embeddings[0], grids[0], image.width, image.height), task)
        return matches
