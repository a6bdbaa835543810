"""Resumable training state, shared by the contrastive training and DreamBooth."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..runtime.errors import EdgePersrepError
from ..runtime.files import atomic_write_json


class Checkpoints:
    """Training state every `checkpoint_every` steps: trainable weights, Adam state, both RNG
    states, the step, the loss curve and, for fp16 training, the gradient scaler. Used by the
    contrastive training and by DreamBooth. Each checkpoint is a new directory; `checkpoint.json`
    (written atomically) names the current one, so a kill at any moment leaves a complete checkpoint.
    Resuming rebuilds the same augmented views (same seed) and restores the RNGs, so a resumed run
    ends with the same weights as an uninterrupted one (at the same thread count: sums split over
    threads can round differently, and training gives up threads to other processes, CoreShare)."""

    def __init__(self, out_dir: Path, config):  # a dataclass: TrainConfig or DreamBoothConfig
        self.out_dir, self.pointer = out_dir, out_dir / "checkpoint.json"
        self.config = asdict(config)

    def save(self, step: int, losses: list, model: torch.nn.Module, optimizer, rng: random.Random,
             scaler=None) -> None:
        from safetensors.torch import save_file

        target = self.out_dir / f"checkpoint-{step:06d}"
        target.mkdir(exist_ok=True)
        tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        for i, state in optimizer.state_dict()["state"].items():
            tensors.update({f"adam.{i}.{k}": v.detach().cpu().contiguous() for k, v in state.items()})
        tensors["torch_rng"] = torch.get_rng_state()
        save_file(tensors, str(target / "state.safetensors"))
        version, internal, gauss = rng.getstate()
        meta = {"step": step, "losses": losses, "config": self.config, "python_rng": [version, list(internal), gauss],
                "grad_scaler": scaler.state_dict() if scaler is not None else {}}
        atomic_write_json(target / "state.json", meta)
        previous = self._current()
        atomic_write_json(self.pointer, {"current": target.name})
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)

    def _current(self) -> Path | None:
        if not self.pointer.is_file():
            return None
        name = json.loads(self.pointer.read_text()).get("current", "")
        path = self.out_dir / name
        return path if name.startswith("checkpoint-") and (path / "state.json").is_file() else None

    def restore(self, model: torch.nn.Module, optimizer, rng: random.Random, scaler=None) -> tuple[int, list]:
        from safetensors.torch import load_file

        current = self._current()
        if current is None:
            return 0, []
        meta = json.loads((current / "state.json").read_text())
        if meta["config"] != json.loads(json.dumps(self.config)):
            raise EdgePersrepError(f"{current}: checkpoint was made with another training config; "
                                   f"delete {self.out_dir} to start over")
        tensors = load_file(str(current / "state.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("param."):
                    params[key[len("param."):]].copy_(value)
        state = optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                state["state"].setdefault(int(index), {})[name] = value
        optimizer.load_state_dict(state)
        torch.set_rng_state(tensors["torch_rng"])
        version, internal, gauss = meta["python_rng"]
        rng.setstate((version, tuple(internal), gauss))
        if scaler is not None and meta.get("grad_scaler"):
            scaler.load_state_dict(meta["grad_scaler"])
        return int(meta["step"]), list(meta["losses"])

    def clear(self) -> None:
        current = self._current()
        self.pointer.unlink(missing_ok=True)
        if current is not None:
            shutil.rmtree(current, ignore_errors=True)
