"""Where a `quick` training step's time goes on this CPU, and what each speed-up buys (issue
"Personalize on a laptop CPU in about a minute").

    python benchmarks/training_speed.py [--rounds 3] [--steps 10] [--out runs/training_speed.json]

A step as `contrastive.train` runs it with the trunk cached: 16 anchors, 16 positives and 16
negatives through the LoRA'd head of Lite0 (stages 4-6 and conv_head), InfoNCE, backward, Adam.
Variants, timed in alternation (`--rounds` rounds, the median step of each after 2 warm-up steps):
    before          torch's dropout, NCHW layout (the code before these speed-ups)
    fast dropout    LoRA dropout masks drawn 16 bits at a time (contrastive.FastDropout)
    now             fast dropout + channels-last layout (what `train` does)
    now + bf16      and bf16 autocast: not used by `train` (CPU-dependent numerics), measured here
Then a torch profile of three `now` steps: the ops that take the time. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import edge_persrep  # noqa: F401  (before torch: it sets OpenMP's wait policy, as the CLI does)

# isort: split
import torch
import torch.nn.functional as F
from torch import nn

from edge_persrep.server_side.backbones import create_backbone
from edge_persrep.server_side.contrastive import FastDropout, add_lora, get_preset, info_nce

VARIANTS = {"before": dict(fast=False, channels_last=False, bf16=False),
            "fast dropout": dict(fast=True, channels_last=False, bf16=False),
            "now": dict(fast=True, channels_last=True, bf16=False),
            "now + bf16": dict(fast=True, channels_last=True, bf16=True)}


def make_step(fast: bool, channels_last: bool, bf16: bool):
    """A quick-preset training step on fixed trunk features (random: the time does not depend on them)."""
    backbone = create_backbone("efficientnet_lite0")
    add_lora(backbone, get_preset("quick"))
    if not fast:  # back to torch's dropout
        for module in backbone.model.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if isinstance(dropouts, nn.ModuleDict):
                for key, dropout in dropouts.items():
                    if isinstance(dropout, FastDropout):
                        dropouts[key] = nn.Dropout(dropout.p)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=layout).eval()
    for name, module in backbone.named_modules():
        if "lora_dropout" in name:
            module.train()
    with torch.no_grad():
        trunk = backbone.trunk(torch.randn(48, 3, 224, 224)).contiguous(memory_format=layout)
    optimizer = torch.optim.Adam([p for p in backbone.parameters() if p.requires_grad], lr=3e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = backbone.head(trunk, (224, 224))[0]
        e = F.normalize(features.float(), dim=1)
        loss = info_nce(e[:16], e[16:32], e[32:], 0.07)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds_per_step(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over the variants")
    ap.add_argument("--steps", type=int, default=10, help="steps per variant and round (2 warm-up)")
    ap.add_argument("--out", type=Path, default=Path("runs/training_speed.json"))
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    steps = {name: make_step(**v) for name, v in VARIANTS.items()}
    timings: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            timings[name].append(seconds_per_step(step, args.steps))
    medians = {name: statistics.median(t) for name, t in timings.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    print("| variant | s / step (median of rounds) | x before | rounds |")
    print("|---|---|---|---|")
    for name, t in timings.items():
        print(f"| {name} | {medians[name]:.3f} | {medians[name] / medians['before']:.2f} | "
              f"{', '.join(f'{x:.2f}' for x in t)} |")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            steps["now"]()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("\n`now`, three steps profiled: | op | share of CPU time |")
    for e in ops:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")},
        "seconds_per_step": {k: round(v, 4) for k, v in medians.items()},
        "rounds": {k: [round(x, 4) for x in v] for k, v in timings.items()},
        "profile_now": {e.key: round(100 * e.self_cpu_time_total / total, 2) for e in ops}}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
