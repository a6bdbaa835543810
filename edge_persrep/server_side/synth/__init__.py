"""Synthetic training data. Each generator: `generate(SynthRequest) -> SynthResult`.

augment, cutpaste, context (and context-sparse) and occlude need only the photos (cutpaste: and masks;
context finds its own);
dreambooth, masked-dreambooth and combined run Stable Diffusion (`personalized_generation`), imported
only when asked for.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from ...runtime.errors import EdgePersrepError
from . import augment, context, cutpaste, occlude
from .base import (
    DIFFUSION_METHODS,
    METHODS_FINDING_MASKS,
    METHODS_NEEDING_MASKS,
    SynthRequest,
    SynthResult,
    in_context_boxes,
    match_masks,
    read_masks,
)


def _diffusion(method: str) -> Callable[[SynthRequest], SynthResult]:
    def run(request: SynthRequest) -> SynthResult:
        from . import personalized_generation

        return personalized_generation.generate(request, method)

    return run


GENERATORS: dict[str, Callable[[SynthRequest], SynthResult]] = {
    "augment": augment.generate,
    "cutpaste": cutpaste.generate,
    "context": context.generate,
    "context-sparse": partial(context.generate, name="context-sparse"),
    "occlude": occlude.generate,
    **{m: _diffusion(m) for m in DIFFUSION_METHODS},
}


def generate(method: str, request: SynthRequest) -> SynthResult:
    if method not in GENERATORS:
        raise EdgePersrepError(f"unknown synthesis method '{method}'; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[method](request)


__all__ = ["DIFFUSION_METHODS", "GENERATORS", "METHODS_FINDING_MASKS", "METHODS_NEEDING_MASKS",
           "SynthRequest", "SynthResult", "generate", "in_context_boxes", "match_masks", "read_masks"]
