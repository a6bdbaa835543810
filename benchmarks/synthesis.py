"""DreamBooth synthesis throughput and memory, through the package's own code paths.

    python benchmarks/synthesis.py [--architecture sd15|tiny] [--device cuda|cpu] [--out runs/synthesis.json]

Random weights at the real Stable Diffusion 1.5 architecture (`sd15`: UNet 860 M, VAE 84 M, text
encoder 123 M) time and weigh the same as the real ones, so no download is needed. On a GPU it
measures, at 512 px and fp16:
  - sampling images/s with the paper's scheduler (PNDM, 50 steps) and DPM-Solver++ (25 steps), at
    several batch sizes (`Sampler`, CFG 5.0 as used);
  - DreamBooth seconds/step and peak GPU memory for LoRA (rank 16, gradient checkpointing) and full
    fine-tuning (`fine_tune`, prior preservation on: 1 instance + 1 class image per step);
  - IP-Adapter sampling (`--synth ip-adapter`: no fine-tuning; a random adapter built for the
    UNet, with a small image encoder where the real one is CLIP ViT-H: its once-per-batch encoding
    is not timed at full size);
and projects one object's job: 450 positives + 1,000 negatives, and 400 DreamBooth steps, against
the goals (<= 10 min of sampling and <= 3 min of LoRA DreamBooth on one H100; LoRA <= 8 GB peak).
Without a GPU use `--architecture tiny` (the default there): it times the tiny test pipeline only,
which says nothing about real speed. `--architecture sd15 --device cpu --batches 1 --repeats 1
--schedulers dpm++:2 --db-steps 2 --modes lora` checks that the real architecture runs through
the same code on a CPU (minutes; no GPU figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_persrep.eval.bench import print_and_save  # noqa: E402

GOALS = {"sampling_min": 10.0, "lora_dreambooth_min": 3.0, "lora_peak_gb": 8.0}
IMAGES_PER_OBJECT = 450 + 1000


def time_sampling(sd, scheduler: str, steps: int, batch: int, repeats: int, device: str,
                  ip_adapter: Path | None = None) -> float:
    """Median seconds per image over `repeats` batches (after one warm-up batch); with `ip_adapter`
    (a folder), each batch conditioned on a photo through it, as `--synth ip-adapter` samples."""
    import torch
    from PIL import Image

    from edge_persrep.server_side.synth.ip_adapter import IPAdapterConfig, load_into
    from edge_persrep.server_side.synth.sampling import Sampler, SamplingConfig

    sampler = Sampler(sd, SamplingConfig(scheduler=scheduler, steps=steps, batch_size=batch))
    photo = None
    if ip_adapter is not None:
        load_into(sampler.pipe, IPAdapterConfig(source=str(ip_adapter)))
        photo = Image.open(ROOT / "examples" / "images" / "dog" / "00.jpg").convert("RGB")
    prompts = ["a photo of sks dog on a beach"] * batch
    times = []
    for r in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        sampler(prompts, list(range(r * batch, (r + 1) * batch)), photo)
        if device == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append((time.perf_counter() - started) / batch)
    return statistics.median(times)


def time_dreambooth(architecture: str, mode: str, steps: int, device: str, dtype) -> dict:
    """fine_tune on a fresh model: seconds/step (after 3 warm-up steps) and peak GPU memory."""
    import torch
    from PIL import Image

    from edge_persrep.server_side.synth.dreambooth import DreamBoothConfig, fine_tune
    from edge_persrep.server_side.synth.sd_models import random_sd

    sd = random_sd(architecture, device=device, dtype=dtype)
    size = sd.resolution
    photos = [Image.effect_noise((size, size), 64).convert("RGB") for _ in range(3)]
    class_images = [Image.effect_noise((size, size), 64).convert("RGB") for _ in range(4)]
    precision = "auto" if device == "cuda" else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        fine_tune(sd, photos, class_images, "dog", DreamBoothConfig(mode=mode, steps=3, precision=precision),
                  Path(tmp) / "warm", device)
        del sd
        if device == "cuda":
            torch.cuda.empty_cache()
        sd = random_sd(architecture, device=device, dtype=dtype)
        summary = fine_tune(sd, photos, class_images, "dog",
                            DreamBoothConfig(mode=mode, steps=steps, precision=precision), Path(tmp) / "run", device)
    return {"seconds_per_step": summary["seconds_per_step"], "peak_gb": summary["peak_gpu_memory_gb"]}


def main(argv=None) -> int:
    import torch

    from edge_persrep.server_side.synth.sd_models import random_sd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--architecture", choices=["sd15", "tiny"])
    ap.add_argument("--batches", default=None, help="comma-separated sampling batch sizes (default 1,4,8,16 / 1,4)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--db-steps", type=int, default=20, help="DreamBooth steps timed per mode")
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--schedulers", default="pndm:50,dpm++:25",
                    help="scheduler:steps pairs; projections to one object's 1,450 images use pndm:50 and dpm++:25")
    ap.add_argument("--out", type=Path, default=Path("runs/synthesis.json"))
    args = ap.parse_args(argv)
    architecture = args.architecture or ("sd15" if args.device == "cuda" else "tiny")
    batches = [int(b) for b in (args.batches or ("1,4,8,16" if args.device == "cuda" else "1,4")).split(",")]
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    report = {"architecture": architecture, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__}
    sd = random_sd(architecture, device=args.device, dtype=dtype)
    report["resolution_px"] = sd.resolution
    best: dict[str, tuple[int, float]] = {}
    for pair in args.schedulers.split(","):
        scheduler, steps = pair.split(":")
        for batch in batches:
            per_image = time_sampling(sd, scheduler, int(steps), batch, args.repeats, args.device)
            report[f"sampling {scheduler} {steps} steps, batch {batch}: images/s"] = round(1 / per_image, 3)
            if pair not in best or per_image < best[pair][1]:
                best[pair] = (batch, per_image)
            print(f"{pair} batch {batch}: {1 / per_image:.3f} images/s", flush=True)
    for pair, label in (("pndm:50", "paper's PNDM 50 steps"), ("dpm++:25", "DPM-Solver++ 25 steps")):
        if pair in best:
            report[f"{IMAGES_PER_OBJECT} images ({label}, batch {best[pair][0]}): minutes"] = round(
                IMAGES_PER_OBJECT * best[pair][1] / 60, 2)
    if best:  # the finetuning-free generator: IP-Adapter (random weights, the UNet's real sizes), fastest setting
        from edge_persrep.server_side.synth.ip_adapter import build_random_ip_adapter

        pair, (batch, _) = min(best.items(), key=lambda item: item[1][1])
        scheduler, steps = pair.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            adapter = build_random_ip_adapter(Path(tmp) / "ipa", sd.unet)
            per_image = time_sampling(sd, scheduler, int(steps), batch, args.repeats, args.device, adapter)
        report[f"IP-Adapter sampling {scheduler} {steps} steps, batch {batch}: images/s"] = round(1 / per_image, 3)
        report[f"IP-Adapter: 450 positives ({scheduler} {steps} steps), no fine-tuning: minutes"] = round(
            450 * per_image / 60, 2)
        print(f"IP-Adapter {pair} batch {batch}: {1 / per_image:.3f} images/s", flush=True)
    del sd
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for mode in args.modes.split(","):
        result = time_dreambooth(architecture, mode, args.db_steps, args.device, dtype)
        report[f"DreamBooth {mode}: steps/s"] = round(1 / result["seconds_per_step"], 3)
        report[f"DreamBooth {mode}: 400 steps, minutes"] = round(400 * result["seconds_per_step"] / 60, 2)
        report[f"DreamBooth {mode}: peak GPU memory GB"] = result["peak_gb"]
        print(f"DreamBooth {mode}: {result}", flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if architecture == "sd15" and args.device == "cuda":
        projected = [v for k, v in report.items() if k.startswith(f"{IMAGES_PER_OBJECT} images")]
        fastest = bool(projected) and min(projected) <= GOALS["sampling_min"]
        report["goal: sampling <= 10 min (fastest scheduler)"] = fastest
        if "DreamBooth lora: 400 steps, minutes" in report:
            minutes = report["DreamBooth lora: 400 steps, minutes"]
            report["goal: LoRA DreamBooth <= 3 min"] = minutes <= GOALS["lora_dreambooth_min"]
            report["goal: LoRA peak <= 8 GB"] = report["DreamBooth lora: peak GPU memory GB"] <= GOALS["lora_peak_gb"]
    import resource

    report["max RSS of this process, GB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
