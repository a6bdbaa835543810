"""Synthetic training data. Each generator: `generate(SynthRequest) -> SynthResult`."""

from __future__ import annotations

from typing import Callable

from ...runtime.errors import EdgePersrepError
from . import augment, cutpaste
from .base import SynthRequest, SynthResult, match_masks, read_masks

GENERATORS: dict[str, Callable[[SynthRequest], SynthResult]] = {
    "augment": augment.generate,
    "cutpaste": cutpaste.generate,
}


def generate(method: str, request: SynthRequest) -> SynthResult:
    if method not in GENERATORS:
        raise EdgePersrepError(f"unknown synthesis method '{method}'; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[method](request)


__all__ = ["GENERATORS", "SynthRequest", "SynthResult", "generate", "match_masks", "read_masks"]
