"""Sampling images from Stable Diffusion: batched, fp16 on CUDA, one seed per image, resumable, shardable.

Every image has its own generator seeded by `image_seed(seed, index)`, so an image does not depend
on the batch it was made in, on the process that made it, or on what was made before it: a rerun
skips finished images and a sharded run (torchrun, accelerate launch) makes exactly the same set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ...runtime.errors import EdgePersrepError
from ..options import SCHEDULER_STEPS
from .base import SynthRequest, SynthResult, image_file, image_seed, merge_shards, run_generator
from .sd_models import StableDiffusion


@dataclass
class SamplingConfig:
    cfg: float = 5.0  # classifier-free guidance (paper: 5.0; also tried 4.0 and 7.5)
    scheduler: str = "pndm"  # pndm (paper, 50 steps) | ddim | dpm++ (DPM-Solver++, 25 steps: about 2x faster)
    steps: int | None = None  # None: the scheduler's default above
    batch_size: int = 8

    def __post_init__(self):
        if self.scheduler not in SCHEDULER_STEPS:
            raise EdgePersrepError(f"unknown scheduler '{self.scheduler}'; choose one of: {', '.join(SCHEDULER_STEPS)}")
        if self.steps is None:
            self.steps = SCHEDULER_STEPS[self.scheduler]
        if self.steps < 1 or self.batch_size < 1:
            raise EdgePersrepError("sampling steps and batch size must be at least 1")

    def record(self) -> dict:
        return {"cfg": self.cfg, "scheduler": self.scheduler, "steps": self.steps}


def make_scheduler(name: str, config: dict):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    return {"pndm": PNDMScheduler, "ddim": DDIMScheduler}[name].from_config(config)


def process_shard() -> tuple[int, int]:
    """(rank, world) of this process under `torchrun` or `accelerate launch --multi_gpu` (both set
    RANK and WORLD_SIZE); (0, 1) for a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join_process_group(device: str) -> None:
    """For a sharded run: each process takes the GPU of its local rank and joins the group
    (NCCL on GPUs, gloo on CPUs; address and port come from the launcher)."""
    if process_shard()[1] == 1:
        return
    import torch
    import torch.distributed as dist

    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")


def wait_for_everyone() -> None:
    """Barrier between the processes of a sharded run (no-op for one process)."""
    if process_shard()[1] > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise EdgePersrepError("sharded run: the process group was not joined (call join_process_group)")
        dist.barrier()


class Sampler:
    """Text -> images with one model state; `__call__(prompts, seeds)` returns PIL images."""

    def __init__(self, sd: StableDiffusion, config: SamplingConfig):
        from diffusers import StableDiffusionPipeline

        self.config = config
        self.resolution = sd.resolution
        self.pipe = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                            unet=sd.unet,
                                            scheduler=make_scheduler(config.scheduler, sd.scheduler_config),
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)

    def __call__(self, prompts: list[str], seeds: list[int], image=None):
        """`image`: the reference photo an IP-Adapter loaded into the pipeline conditions the batch on."""
        import torch

        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # device-independent noise
        extra = {} if image is None else {"ip_adapter_image": image}
        with torch.inference_mode():
            return self.pipe(prompt=prompts, guidance_scale=self.config.cfg, num_inference_steps=self.config.steps,
                             generator=generators, height=self.resolution, width=self.resolution, **extra).images


def sample_set(sampler: Sampler, request: SynthRequest, kind: str, prompt_for: Callable[[int], str],
               settings: dict, reference_for: Callable[[int], int] | None = None,
               references: list | None = None) -> SynthResult:
    """Make `request.count` images of one kind (positives, negatives, backgrounds) into
    `request.out_dir/kind/`, with the manifest `kind.json` recording each prompt, seed and CFG (and,
    with an IP-Adapter, which of `references` conditioned it: `reference_for(i)`, one per batch).
    Under torchrun or `accelerate launch --multi_gpu` each process makes its own shard and the last
    step joins them."""
    settings = {**settings, **sampler.config.record(), "resolution": sampler.resolution}

    def make_batch(indices: list[int]):
        prompts = [prompt_for(i) for i in indices]
        seeds = [image_seed(f"{request.seed}:{kind}", i) for i in indices]  # each set its own noise
        reference = reference_for(indices[0]) if reference_for is not None else None
        images = sampler(prompts, seeds, None if reference is None else references[reference])
        extra = {} if reference is None else {"reference_photo": reference}
        return [(image, {"prompt": p, "generator_seed": s, "cfg": sampler.config.cfg, **extra})
                for image, p, s in zip(images, prompts, seeds)]

    rank, world = process_shard()
    manifest_name = f"{kind}.json"
    result = run_generator(request, "stable-diffusion", make_batch=make_batch, batch_size=sampler.config.batch_size,
                           subdir=kind, manifest_name=manifest_name, settings=settings, shard=(rank, world))
    if world == 1:
        return result
    wait_for_everyone()
    merged = merge_shards(request, "stable-diffusion", world, subdir=kind, manifest_name=manifest_name,
                          settings=settings) if rank == 0 else None
    wait_for_everyone()
    if merged is None:  # the other processes read what rank 0 joined
        return SynthResult([request.out_dir / image_file(kind, i) for i in range(request.count)],
                           request.out_dir / manifest_name)
    return merged
