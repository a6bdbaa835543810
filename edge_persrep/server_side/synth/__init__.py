"""Synthetic training data. Each generator: `generate(SynthRequest) -> SynthResult`.

augment and cutpaste need only the photos (and masks); dreambooth, masked-dreambooth and combined
run Stable Diffusion (`personalized_generation`), imported only when asked for.
"""

from __future__ import annotations

from typing import Callable

from ...runtime.errors import EdgePersrepError
from . import augment, cutpaste
from .base import DIFFUSION_METHODS, METHODS_NEEDING_MASKS, SynthRequest, SynthResult, match_masks, read_masks


def _diffusion(method: str) -> Callable[[SynthRequest], SynthResult]:
    def run(request: SynthRequest) -> SynthResult:
        from . import personalized_generation

        return personalized_generation.generate(request, method)

    return run


GENERATORS: dict[str, Callable[[SynthRequest], SynthResult]] = {
    "augment": augment.generate,
    "cutpaste": cutpaste.generate,
    **{m: _diffusion(m) for m in DIFFUSION_METHODS},
}


def generate(method: str, request: SynthRequest) -> SynthResult:
    if method not in GENERATORS:
        raise EdgePersrepError(f"unknown synthesis method '{method}'; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[method](request)


__all__ = ["DIFFUSION_METHODS", "GENERATORS", "METHODS_NEEDING_MASKS", "SynthRequest", "SynthResult", "generate",
           "match_masks", "read_masks"]
