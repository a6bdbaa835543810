"""`edge-persrep` console script. Runtime commands (enroll, find, retrieve, info) import no torch.

Exit codes: 0 success; 2 a user-actionable error (one line naming the file and the fix; --debug
shows the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runtime.errors import EdgePersrepError
from .runtime.threads import set_threads
from .server_side.options import (
    BACKBONES,
    CALIBRATE_ON,
    DEFAULT_BACKBONE,
    DEFAULT_PRESET,
    DEFAULT_SYNTH,
    DIFFUSION_PRECISIONS,
    DREAMBOOTH_MODES,
    FILTER_MODES,
    PATCH_THRESHOLD,
    SCHEDULER_STEPS,
    TRAIN_PRECISION_CHOICES,
)

BUNDLE_HELP = "a bundle folder, or a `personalize` run directory (its bundle/ is used)"
BACKBONE_HELP = f"{' | '.join(BACKBONES)} (default {DEFAULT_BACKBONE}: the edge default, its weights ship as a package)"


COMPUTING = ("personalize", "synth", "export", "enroll", "find", "retrieve", "eval", "bench")  # take --threads


def thread_count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value}: use 0 (one per core) or a positive count")
    return n


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value}: use a positive count")
    return n


def add_threads(p) -> None:
    p.add_argument("--threads", type=thread_count, default=0,
                   help="compute threads for torch and ONNX Runtime (default 0: one per core); fewer leaves "
                        "cores to other work")


def bundle_dir(value: str) -> Path:
    """A bundle folder as given, or a run directory's bundle/ (`find RUN` works like `find RUN/bundle`)."""
    path = Path(value)
    if (path / "run.json").is_file() and not (path / "bundle.json").is_file() and (path / "bundle").is_dir():
        return path / "bundle"
    return path


def _add_personalize(sub) -> None:
    p = sub.add_parser("personalize", help="photos of one object (or --object several) -> personalized bundle "
                                           "(server side, torch)")
    p.add_argument("images", nargs="*", help="photos of the object, or a folder of them")
    p.add_argument("--name", help="what to call the object")
    p.add_argument("--category", help="its category, e.g. dog, mug, sneaker")
    p.add_argument("--object", action="append", default=[], metavar="NAME[:CATEGORY]=DIR",
                   help="joint run: one LoRA and one bundle for several objects (repeat; at least two), each "
                        "told apart from the others and from the negatives")
    p.add_argument("--add", metavar="NAME[:CATEGORY]=DIR",
                   help="add an object to the joint run in --out: training continues from its LoRA on every "
                        "object, all are re-enrolled, the bundle is swapped when done")
    p.add_argument("--out", required=True, type=Path, help="run directory (resumable; bundle in OUT/bundle)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=BACKBONE_HELP)
    p.add_argument("--weights", type=Path, help="local backbone weights (.safetensors or state dict)")
    p.add_argument("--synth", default=DEFAULT_SYNTH,
                   help="augment | context (augment + the object pasted small onto the negatives; masks found "
                        "when not given) | context-sparse (the same, 1 positive in 8 in context) | occlude (augment, "
                        "half of them partly covered: random erasing) | cutpaste | dreambooth | masked-dreambooth | "
                        "combined | ip-adapter (the "
                        "last four run Stable Diffusion: a GPU machine, see --sd-model; ip-adapter trains nothing, "
                        "see --ip-adapter)")
    p.add_argument("--synth-data", type=Path, help="use a finished `edge-persrep synth` output instead of generating")
    p.add_argument("--negatives", type=Path, action="append", default=[],
                   help="folder of photos of other objects of the same category (repeatable; needed unless "
                        "--others is given or a Stable Diffusion --synth generates them)")
    p.add_argument("--others", type=Path, help="a bundle whose enrolled objects serve as negatives")
    p.add_argument("--calibrate-on", choices=CALIBRATE_ON, default=None,
                   help="negatives the present threshold is calibrated on: the ones trained against (default), "
                        "or whole look-alikes (NAME_*.jpg) held out of training")
    p.add_argument("--masks", type=Path, help="folder of object masks named like the photos (cutpaste; context)")
    p.add_argument("--backgrounds", type=Path,
                   help="folder of background photos for cutpaste and context (default: the negatives)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="quick (CPU, minutes) | paper (the paper's recipe)")
    p.add_argument("--steps", type=int, help="override the preset's number of training steps")
    p.add_argument("--train-precision", choices=TRAIN_PRECISION_CHOICES,
                   help="auto (default: bf16 on a CPU with AVX512-BF16 for the quick preset, else fp32; the run "
                        "records which), fp32, "
                        "or bf16: the trained layers under bf16 autocast, about 0.95x the time of a quick step "
                        "(refused on CPUs without native bf16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of synthesis and training (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory that is not a run")
    _add_diffusion_options(p)


def _add_diffusion_options(p) -> None:
    g = p.add_argument_group("Stable Diffusion synthesis (dreambooth, masked-dreambooth, combined)")
    g.add_argument("--sd-model", default=None,
                   help="hub id or local diffusers folder (default stable-diffusion-v1-5/stable-diffusion-v1-5); "
                        "--offline reads only the local cache")
    g.add_argument("--positives", type=int,
                   help="positives to generate (default 450 for the Stable Diffusion methods, as the paper; "
                        "the preset's for augment/cutpaste)")
    g.add_argument("--synth-negatives", type=int, help="negatives from the un-tuned model (default and paper 1000)")
    g.add_argument("--dreambooth", choices=DREAMBOOTH_MODES, help="LoRA (default; 8 GB GPUs) or full (paper)")
    g.add_argument("--db-steps", type=int, help="DreamBooth steps (default and paper 400)")
    g.add_argument("--db-lr", type=float, help="DreamBooth learning rate (default 1e-4 LoRA, 2e-6 full)")
    g.add_argument("--db-rank", type=int, help="DreamBooth LoRA rank (default 16)")
    g.add_argument("--train-text-encoder", action="store_true", default=None, help="train the text encoder too (paper)")
    g.add_argument("--prior-weight", type=float, help="prior-preservation loss weight (default and paper 1.0)")
    g.add_argument("--class-images", type=int, help="prior-preservation class images (default and paper 200)")
    g.add_argument("--token", help="the rare token the object is bound to (default sks)")
    g.add_argument("--precision", choices=DIFFUSION_PRECISIONS,
                   help="DreamBooth and sampling precision (auto: fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--cfg", type=float, help="classifier-free guidance (default and paper 5.0; also 4.0, 7.5)")
    g.add_argument("--scheduler", choices=list(SCHEDULER_STEPS),
                   help="pndm (SD 1.5's, 50 steps, paper) | ddim | dpm++ (DPM-Solver++, 25 steps)")
    g.add_argument("--sample-steps", type=int, help="denoising steps (default: 50, or 25 for dpm++)")
    g.add_argument("--sample-batch", type=int, help="images per sampling batch (default 8)")
    g.add_argument("--scenes", type=int, help="combined: generated backgrounds for Cut-and-Paste (default 100)")
    g.add_argument("--prompts", type=Path, help="prompt file replacing the built-in bank (one per line, {subject})")
    g.add_argument("--min-similarity", type=float,
                   help="filter: keep a positive whose object crop has at least this mean cosine to the real "
                        "photos (default: paper's 0.6, 0.55 for animals; -1 keeps everything)")
    g.add_argument("--refine", choices=["none", "patchdpo"],
                   help="after LoRA DreamBooth: patchdpo continues it with a loss weighted by each generated "
                        "patch's quality against the photos (PatchDPO; default none)")
    g.add_argument("--refine-steps", type=int, help="--refine patchdpo: training steps (default 100)")
    g.add_argument("--refine-samples", type=int, help="--refine patchdpo: generated images it learns from (default 32)")
    g.add_argument("--ip-adapter", help="--synth ip-adapter: hub id or folder of the IP-Adapter (default "
                                         "h94/IP-Adapter: models/ip-adapter_sd15.safetensors + models/image_encoder)")
    g.add_argument("--ip-adapter-scale", type=float, help="--synth ip-adapter: how strongly the photo steers "
                                                          "(default 0.6; 0 = the prompt alone)")
    g.add_argument("--filter-mode", choices=FILTER_MODES,
                   help="filter on the paper's object-crop score (global, default) or on patch quality (patch: "
                        "PatchDPO-style, the lower quartile of the object's patch matches; default threshold "
                        f"{PATCH_THRESHOLD})")


def _diffusion_options(args, **resolved):
    """DiffusionOptions from the options the user gave (+ `resolved`: device, filter backbone)."""
    from .server_side.synth.dreambooth import DreamBoothConfig
    from .server_side.synth.ip_adapter import IPAdapterConfig
    from .server_side.synth.patchdpo import PatchDPOConfig
    from .server_side.synth.personalized_generation import DiffusionOptions
    from .server_side.synth.sampling import SamplingConfig

    return DiffusionOptions(
        dreambooth=DreamBoothConfig(**_given(args, mode="dreambooth", steps="db_steps", lr="db_lr", rank="db_rank",
                                             train_text_encoder="train_text_encoder", prior_weight="prior_weight",
                                             class_images="class_images", token="token", precision="precision",
                                             seed="seed")),
        sampling=SamplingConfig(**_given(args, cfg="cfg", scheduler="scheduler", steps="sample_steps",
                                         batch_size="sample_batch")),
        ip_adapter=IPAdapterConfig(**_given(args, source="ip_adapter", scale="ip_adapter_scale")),
        patchdpo=PatchDPOConfig(**_given(args, steps="refine_steps", samples="refine_samples")),
        **_given(args, sd_model="sd_model", negatives="synth_negatives", backgrounds="scenes", prompts_file="prompts",
                 min_similarity="min_similarity", filter_mode="filter_mode", refine="refine"),
        **resolved)


def _given(args, **fields: str) -> dict:
    """{config field: value} for the options the user gave; the rest keep the config's own default."""
    return {name: getattr(args, option) for name, option in fields.items() if getattr(args, option, None) is not None}


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="synthesis alone: photos -> generated positives and negatives (inspectable; "
                                     "shards over GPUs under torchrun / accelerate launch --multi_gpu)")
    p.add_argument("images", nargs="+", help="photos of the object, or a folder of them")
    p.add_argument("--category", required=True, help="the object's category, e.g. dog (prompts and negatives)")
    p.add_argument("--out", required=True, type=Path, help="data directory (resumable)")
    p.add_argument("--method", default="dreambooth",
                   choices=["dreambooth", "masked-dreambooth", "combined", "ip-adapter"],
                   help="the generator (default dreambooth; ip-adapter: no fine-tuning, the photos as image prompts)")
    p.add_argument("--masks", type=Path, help="folder of object masks named like the photos")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="the filter's embedder")
    p.add_argument("--weights", type=Path, help="local weights for --backbone")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of fine-tuning and generation (default 0)")
    _add_diffusion_options(p)
    p = sub.add_parser("make-test-sd", help="write a randomly initialised Stable-Diffusion-shaped diffusers folder "
                                            "(tiny: try the DreamBooth path offline; sd15: benchmarks)")
    p.add_argument("--out", required=True, type=Path, help="folder for the random-weight diffusers pipeline")
    p.add_argument("--architecture", default="tiny", choices=["tiny", "sd15"],
                   help="tiny (tests, seconds) or sd15 (SD 1.5's real sizes, for timing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a run (or a pretrained backbone) -> bundle")
    p.add_argument("run_dir", nargs="?", type=Path, help="run directory made by `personalize`")
    p.add_argument("--out", required=True, type=Path, help="the bundle directory to write")
    p.add_argument("--backbone", help="with --pretrained: the backbone to export")
    p.add_argument("--pretrained", action="store_true", help="export the un-personalized backbone")
    p.add_argument("--weights", type=Path, help="local backbone weights for --pretrained")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory that is not a bundle")
    p.add_argument("--format", default="onnx", help="comma-separated: onnx (always), ort, coreml")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32 (always), fp16, int8")
    p.add_argument("--calibration", type=Path, help="with --pretrained: photos to calibrate and check int8")
    p.add_argument("--force-int8", action="store_true", help="ship an int8 model even if it fails the gate")
    p.add_argument("--min-cosine", type=float, help="gate: min embedding cosine vs fp32 (default 0.99)")
    p.add_argument("--max-ap-drop", type=float, help="gate: max classification AP drop vs fp32 (default 0.01)")
    p.add_argument("--min-grid-cosine", type=float, help="gate: min mean patch-grid cosine vs fp32 (default 0.95)")
    p.add_argument("--input-size", type=int,
                   help="the model's input side (default the backbone's, 320 for Lite: a 10x10 patch grid); "
                        "Lite takes any multiple of 32, e.g. 448 for a 14x14 grid (benchmarks/dense_grid.py)")
    p = sub.add_parser("export-adapter", help="the LoRA adapter alone (peft format, small)")
    p.add_argument("run_dir", type=Path, help="run directory made by `personalize`")
    p.add_argument("--out", required=True, type=Path, help="where to write the adapter (peft safetensors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-persrep", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--offline", action="store_true",
                        help="never touch the network (also the effect of HF_HUB_OFFLINE=1); packaged and --weights "
                             "backbones never do anyway, hub backbones then fail with what to pass instead")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_personalize(sub)
    _add_synth(sub)
    _add_export(sub)
    p = sub.add_parser("enroll", help="add an object to a bundle from its photos (runtime only)")
    p.add_argument("bundle", type=bundle_dir, help=BUNDLE_HELP)
    p.add_argument("images", nargs="+", help="photos of the object, or folders of them")
    p.add_argument("--name", required=True, help="what to call the object (an existing name is replaced)")
    p.add_argument("--category", default="", help="its category, e.g. dog (informative)")
    p.add_argument("--negatives", type=Path, action="append", default=[],
                   help="photos of other things of the object's category to calibrate its threshold on "
                        "(without them, and with no other object enrolled, a warning)")
    p = sub.add_parser("find", help="look for the enrolled objects in photos (runtime only)")
    p.add_argument("bundle", type=bundle_dir, help=BUNDLE_HELP)
    p.add_argument("images", nargs="+", help="photos, folders of them, or videos (.mp4, .mov, .webm: video extra)")
    p.add_argument("--task", default="all", choices=["classify", "detect", "segment", "all"],
                   help="classify: score and present; detect: + box; segment: + mask; all (default): all of it")
    p.add_argument("--name", action="append", help="only these objects (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    p.add_argument("--overlays", type=Path, help="write box/mask overlays (and mask PNGs) here")
    p.add_argument("--variant", help="run a variant instead of the fp32 model: fp16, int8, ort")
    p.add_argument("--every", type=positive_int, default=1, help="videos: answer every N-th frame (default 1)")
    p.add_argument("--no-smoothing", action="store_true",
                   help="videos: each frame's own decision (default: smoothed over frames, with hysteresis)")
    p = sub.add_parser("retrieve", help="rank a folder of photos by how strongly they show an object")
    p.add_argument("bundle", type=bundle_dir, help=BUNDLE_HELP)
    p.add_argument("gallery", nargs="+", help="the photos to rank, or folders of them")
    p.add_argument("--name", required=True, help="the enrolled object to rank them by")
    p.add_argument("--top", type=int, default=10, help="how many to list (default 10)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p = sub.add_parser("info", help="what a bundle holds, and whether its checks pass")
    p.add_argument("bundle", type=bundle_dir, help=BUNDLE_HELP)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p = sub.add_parser("upgrade", help="convert a bundle of an older format (1: numpy-zip store) to the current one")
    p.add_argument("bundle", type=bundle_dir, help=BUNDLE_HELP)
    p = sub.add_parser("eval", help="pretrained vs personalized on the four tasks; writes report.json + index.html")
    p.add_argument("--dataset", required=True, type=Path, help="the dataset folder (see --layout)")
    p.add_argument("--layout", default="pods", choices=["pods", "procedural", "dreambooth"],
                   help="how the dataset is laid out (default pods)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=BACKBONE_HELP)
    p.add_argument("--synth", default="augment,cutpaste", help="comma-separated synthesis methods to compare")
    p.add_argument("--out", required=True, type=Path, help="report folder (report.json, report.html, work/)")
    p.add_argument("--objects", help="comma-separated subset of objects")
    p.add_argument("--quick", action="store_true", help="40 training steps per object instead of the preset's")
    p.add_argument("--steps", type=int, help="training steps per object (overrides --quick)")
    p.add_argument("--baseline", action="append", default=[], choices=["pdm"],
                   help="also score a training-free baseline: pdm (PDM, diffusion-feature matching; needs --sd-model)")
    _add_diffusion_options(p)
    p = sub.add_parser("make-dataset", help="write the procedural instance-level dataset")
    p.add_argument("kind", choices=["procedural"], help="procedural: rendered objects with look-alike twins")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--objects", type=int, default=8, help="number of objects (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the renderer")
    p = sub.add_parser("bench", help="median latency: torch eager vs ORT, and each runtime task")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=BACKBONE_HELP)
    p.add_argument("--images", nargs="+", help="photos to time on (default: the examples' held-out photos)")
    p.add_argument("--examples", type=Path,
                   help="the sample photos folder (default: examples/images of the checkout this runs from)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (the median is reported)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON written (default bench.json)")
    p.add_argument("--variants", action="store_true",
                   help="instead: table per backbone x variant (fp32/fp16/int8/ort): size, latency, cosine, AP")
    p.add_argument("--backbones", default=DEFAULT_BACKBONE, help="with --variants: comma-separated")
    p.add_argument("--random-init", action="store_true", help="with --variants: random weights (ViTs offline)")
    for name in COMPUTING:
        add_threads(sub.choices[name])
    return parser


def cmd_personalize(args) -> None:
    from .pipeline import PersonalizeRequest, personalize

    if args.object or args.add:
        return personalize_joint_command(args)
    if not args.images or not args.name or not args.category:
        raise EdgePersrepError("personalize needs PHOTOS, --name and --category (or --object NAME=DIR ... for a "
                               "joint run, or --add NAME=DIR to add to one)")
    request = PersonalizeRequest(args.images, args.name, args.category, args.out, negatives=args.negatives,
                                 others=args.others, backbone=args.backbone, weights=args.weights,
                                 synth_method=args.synth, synth_data=args.synth_data, masks=args.masks,
                                 backgrounds=args.backgrounds, diffusion=_diffusion_options(args),
                                 positives=args.positives, preset=args.preset, steps=args.steps, device=args.device,
                                 seed=args.seed, force=args.force,
                                 **_given(args, calibrate_on="calibrate_on", train_precision="train_precision"))
    bundle = personalize(request)
    print(personalize_summary(bundle, args.name))


def personalize_joint_command(args) -> None:
    from .pipeline.joint import JointRequest, add_object, parse_object, personalize_joint
    from .runtime import Finder

    if args.images or args.name:
        raise EdgePersrepError("a joint run takes its objects from --object NAME=DIR (no PHOTOS or --name)")
    if args.add:
        if args.object:
            raise EdgePersrepError("use either --object (a new joint run) or --add (one more object), not both")
        bundle = add_object(args.out, parse_object(args.add, args.category or ""), args.steps)
    else:
        objects = [parse_object(v, args.category or "") for v in args.object]
        bundle = personalize_joint(JointRequest(objects, args.out, args.negatives, args.backbone, args.synth,
                                                args.preset, args.steps, args.seed, args.device,
                                                **_given(args, train_precision="train_precision")))
    store = Finder.open(bundle).store
    print(f"joint bundle at {bundle}: " + ", ".join(f"'{p.name}' (present at >= {p.threshold:.3f})"
                                                    for p in store.objects.values()))
    print(f"  next: edge-persrep find {bundle} PHOTO   (one model run answers for every object)")


RESUMABLE = {"personalize", "synth", "eval"}  # a rerun of the same command picks up where it stopped


def personalize_summary(bundle: Path, name: str) -> str:
    """What a finished `personalize` tells the user: where, how well calibrated, how long, what next."""
    from .pipeline import RunDir
    from .runtime import Finder

    record = RunDir(bundle.parent).read()
    threshold = Finder.open(bundle).store.objects[name].threshold
    calibration = record.get("calibration", {})
    timings = record.get("timings", {})
    stages = " | ".join(f"{key.removesuffix('_s').replace('_', ' + ')} {timings[key]:.0f} s"
                        for key in ("prepare_s", "synth_s", "train_s", "export_enroll_s") if key in timings)
    return "\n".join([
        f"personalized '{name}' ({record['backbone']}, synth {record['synth']}, preset {record['preset']}): "
        f"bundle at {bundle}",
        f"  present when the score is >= {threshold:.3f} (calibrated on "
        f"{calibration.get('enrolment_negatives', '?')} negatives)",
        f"  time: {stages}",
        f"  next: edge-persrep find {bundle} PHOTO [--task detect|segment|all] "
        f"(or retrieve, enroll, export {bundle.parent})"])


def cmd_synth(args) -> None:
    from .pipeline import DIFFUSION_POSITIVES, resolve_device
    from .runtime import list_images
    from .runtime.images import refuse_duplicates
    from .server_side.synth import SynthRequest, match_masks, personalized_generation
    from .server_side.synth.sampling import process_shard

    photos = list_images(args.images)
    refuse_duplicates(photos)
    options = _diffusion_options(args, device=resolve_device(args.device), filter_backbone=args.backbone,
                                 filter_weights=args.weights)
    request = SynthRequest(photos=photos, category=args.category, out_dir=args.out,
                           count=args.positives or DIFFUSION_POSITIVES,
                           seed=args.seed, masks=match_masks(photos, args.masks) if args.masks else None,
                           diffusion=options)
    result = personalized_generation.generate(request, args.method)
    if process_shard()[0] == 0:
        print(f"synth data at {args.out}: {len(result.positives)} positives, {len(result.negatives)} negatives")


def cmd_make_test_sd(args) -> None:
    from .server_side.synth.ip_adapter import build_random_ip_adapter
    from .server_side.synth.sd_models import build_random_sd, load_sd

    out = build_random_sd(args.out, args.architecture, args.seed)
    adapter = build_random_ip_adapter(out / "ip-adapter", load_sd(out).unet, args.seed)
    print(f"random-weight {args.architecture} Stable Diffusion at {out}, and an IP-Adapter for it at {adapter} "
          "(they draw noise: for trying the pipeline and for benchmarks, not for real data)")


def cmd_export(args) -> None:
    from .export.precision import Gate
    from .export.variants import FORMATS, PRECISIONS, parse_list
    from .pipeline import export_pretrained, export_run

    options = dict(formats=parse_list(args.format, FORMATS, "format"),
                   precisions=parse_list(args.precision, PRECISIONS, "precision"), force_int8=args.force_int8,
                   gate=Gate.with_overrides(min_cosine=args.min_cosine, max_ap_drop=args.max_ap_drop,
                                            min_grid_cosine=args.min_grid_cosine), force=args.force,
                   size=args.input_size)
    if args.pretrained:
        if not args.backbone:
            raise EdgePersrepError("export --pretrained needs --backbone NAME")
        out = export_pretrained(args.backbone, args.out, weights=args.weights, calibration=args.calibration, **options)
    elif args.run_dir is not None:
        if args.calibration is not None:
            raise EdgePersrepError(f"--calibration {args.calibration}: a run calibrates int8 on its own synthetic "
                                   "positives and negatives; --calibration is for --pretrained exports only")
        out = export_run(args.run_dir, args.out, **options)
    else:
        raise EdgePersrepError("export: give a RUN_DIR, or --backbone NAME --pretrained")
    print(f"bundle at {out}")


def cmd_export_adapter(args) -> None:
    from .export.adapters import export_adapter

    out = export_adapter(args.run_dir, args.out)
    print(f"adapter at {out}")


def cmd_enroll(args) -> None:
    from .runtime import Finder, list_images
    from .runtime.images import refuse_duplicates

    finder = Finder.open(args.bundle)
    photos = list_images(args.images)
    refuse_duplicates(photos)
    negatives = list_images(args.negatives) if args.negatives else []
    replacing = args.name in finder.store.objects
    others = [n for n in finder.store.objects if n != args.name]
    p = finder.enroll(args.name, photos, category=args.category, negatives=negatives)
    print(f"{'replaced' if replacing else 'enrolled'} '{p.name}' from {len(p.embeddings)} photos "
          f"(threshold {p.threshold:.3f}) into {args.bundle}")
    if not negatives and not others:
        print(f"edge-persrep: warning: nothing to calibrate '{p.name}' against (no --negatives, no other object "
              "enrolled): its threshold comes from its own photos and will accept look-alikes; enroll again with "
              "--negatives DIR (photos of other things of its category)", file=sys.stderr)


def cmd_find(args) -> None:
    from PIL import Image

    from .runtime import Finder, ImageError, list_images, load_image
    from .runtime.finder import overlay
    from .runtime.video import is_video

    finder = Finder.open(args.bundle, variant=args.variant)
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
    videos = [Path(p) for p in args.images if Path(p).is_file() and is_video(p)]
    for video in videos:
        find_in_video(finder, video, args)
    photos = [p for p in args.images if Path(p) not in videos]
    paths = list_images(photos) if photos else []
    stems = overlay_stems(paths)
    unreadable = 0
    for path in paths:
        try:
            photo = load_image(path)
        except ImageError as exc:  # one bad photo among many: say so, answer for the rest
            if len(paths) == 1:
                raise
            print(f"edge-persrep: error: {exc}", file=sys.stderr)
            unreadable += 1
            continue
        (features,) = finder.embed([photo])
        results = []
        for m in finder.find(features, task=args.task, names=args.name):
            mask_path = None
            if args.overlays and m.mask is not None:
                stem = f"{stems[path]}.{m.name}"
                mask_path = args.overlays / f"{stem}.mask.png"
                Image.fromarray(m.mask.astype("uint8") * 255).save(mask_path)
                overlay(photo, m, args.overlays / f"{stem}.overlay.jpg")
            results.append(match_json(finder, m, mask_path))
        if args.json:
            print(json.dumps({"image": str(path), "results": results}), flush=True)
        else:
            for r in results:
                where = f" box={r['box']}" if r["box"] else ""
                where += f" (outscored by {r['outscored_by']} here)" if r["outscored_by"] else ""
                print(f"{path}\t{r['name']}\tscore={r['score']:.3f}\t{'PRESENT' if r['present'] else 'absent'}{where}")
    if unreadable:
        raise EdgePersrepError(f"{unreadable} photo(s) could not be read (listed above); the others were answered")


def match_json(finder, m, mask_path: Path | None = None) -> dict:
    """One object's answer as `find --json` prints it."""
    from .runtime.dense import mask_to_rle

    return {"name": m.name, "score": round(m.score, 4), "present": m.present,
            "threshold": round(finder.store.objects[m.name].threshold, 4), "outscored_by": m.outscored_by,
            "global_score": round(m.global_score, 4), "region_score": round(m.region_score, 4),
            "region_box": list(m.region_box) if m.region_box is not None else None,
            "box": list(m.box) if (m.box is not None and m.present) else None,
            "box_score": None if m.box_score is None else round(m.box_score, 4),
            "mask": mask_to_rle(m.mask) if (m.mask is not None and m.present) else None,
            "mask_png": str(mask_path) if (mask_path and m.present) else None}


def find_in_video(finder, path: Path, args) -> None:
    """`find` on a video: frames decoded one at a time, `present` smoothed (unless --no-smoothing);
    one JSON line per frame with --json, else a line whenever an object appears or disappears;
    with --overlays, an annotated copy of the video."""
    from .runtime.finder import annotate
    from .runtime.video import NO_SMOOTHING, Smoothing, VideoWriter, read_video, video_rate

    rate = video_rate(path) / args.every
    smoothing = NO_SMOOTHING if args.no_smoothing else Smoothing()
    writer = VideoWriter(args.overlays / f"{path.stem}.annotated.mp4", rate) if args.overlays else None
    shown: dict[str, bool] = {}
    frames = 0
    try:
        for result in finder.stream(read_video(path, args.every), task=args.task, smoothing=smoothing, rate=rate):
            frames += 1
            matches = [m for m in result.matches if args.name is None or m.name in args.name]
            if writer is not None:
                writer.write(annotate(result.image, [m for m in matches if m.present]))
            if args.json:
                print(json.dumps({"video": str(path), "frame": result.index, "time": round(result.time, 3),
                                  "results": [match_json(finder, m) for m in matches]}), flush=True)
                continue
            for m in matches:
                if shown.get(m.name, False) != m.present:
                    where = f" box={list(m.box)}" if m.box else ""
                    print(f"{path}\t{result.time:8.2f}s\t{m.name}\t{'appears' if m.present else 'disappears'}"
                          f"\tscore={m.score:.3f}{where}", flush=True)
                    shown[m.name] = m.present
    finally:
        if writer is not None:
            writer.close()
    if not args.json:
        print(f"{path}: {frames} frames answered" + (f", annotated video {writer.path}" if writer else ""))


def overlay_stems(paths: list[Path]) -> dict[Path, str]:
    """Each photo's overlay file stem: its own, or with -2, -3... when another photo has the same
    name (a/x.jpg and b/x.jpg must not overwrite each other's overlays)."""
    used: set[str] = set()
    stems = {}
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems[path] = stem
    return stems


def cmd_retrieve(args) -> None:
    from .runtime import Finder, list_images

    finder = Finder.open(args.bundle)
    paths = list_images(args.gallery)
    ranked = finder.retrieve(args.name, finder.embed(paths), top=args.top)
    for rank, (i, score) in enumerate(ranked, 1):
        if args.json:
            print(json.dumps({"rank": rank, "image": str(paths[i]), "score": round(score, 4)}))
        else:
            print(f"{rank}\t{score:.3f}\t{paths[i]}")


def cmd_info(args) -> None:
    from .runtime import Bundle, PrototypeStore

    bundle = Bundle.load(args.bundle)  # verifies checksums
    bundle.verify_variants()
    store = PrototypeStore.load(bundle.store_path, bundle.model_sha256) if bundle.store_path.exists() else None
    m = bundle.manifest
    info = {"bundle": str(args.bundle), "format_version": m["format_version"], "backbone": m["backbone"],
            "input": {k: m["input"][k] for k in ("size", "dtype", "layout", "color")}, "outputs": m["outputs"],
            "model_bytes": bundle.model_path.stat().st_size, "checksums": "ok",
            "export_check": m.get("export_check"), "training": m.get("training"),
            "variants": {k: {f: v.get(f) for f in ("format", "precision", "bytes", "check", "gate", "mobile_usability")
                             if v.get(f) is not None} for k, v in (m.get("variants") or {}).items()},
            "variants_rejected": m.get("variants_rejected"),
            "objects": [{"name": p.name, "category": p.category, "references": len(p.embeddings),
                         "threshold": round(p.threshold, 4)} for p in (store.objects.values() if store else [])]}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"bundle {args.bundle}: format {info['format_version']}, backbone {m['backbone']['name']}, "
          f"input {info['input']['size']}px {info['input']['dtype']} {info['input']['layout']}")
    print(f"  model.onnx {info['model_bytes'] / 1e6:.1f} MB, checksums ok; export check {info['export_check']}")
    print(f"  embedding dim {m['outputs']['embedding']['dim']}, patch grid "
          f"{m['outputs']['patch_grid']['height']}x{m['outputs']['patch_grid']['width']}x{m['outputs']['patch_grid']['dim']}")
    for name, v in info["variants"].items():
        check = v.get("check") or {}
        gate = v.get("gate") or {}
        detail = (f", min cosine {check['min_cosine_embedding']}, AP {check.get('ap')} vs fp32 {check.get('ap_fp32')}, "
                  f"gate {'passed' if gate.get('passed') else 'FORCED'}") if check else ""
        print(f"  variant {name}: {v.get('format')} {v.get('precision')}, {v['bytes'] / 1e6:.1f} MB{detail}")
    for name, r in (info["variants_rejected"] or {}).items():
        print(f"  variant {name}: REFUSED ({'; '.join(r['reasons'])})")
    for o in info["objects"]:
        print(f"  object '{o['name']}' ({o['category'] or 'no category'}): {o['references']} photos, "
              f"threshold {o['threshold']}")
    if not info["objects"]:
        print("  no objects enrolled")


def cmd_upgrade(args) -> None:
    from .runtime.bundle import FORMAT_VERSION, upgrade

    if upgrade(args.bundle):
        print(f"{args.bundle}: upgraded to bundle format {FORMAT_VERSION}")
    else:
        print(f"{args.bundle}: already bundle format {FORMAT_VERSION}, nothing to do")


def cmd_bench(args) -> None:
    from .eval.bench import run_bench, run_variants_bench

    if args.variants:
        run_variants_bench(args.backbones.split(","), args.repeats, args.out, args.random_init, args.examples)
    else:
        run_bench(args.backbone, args.images, args.repeats, args.threads, args.out, args.examples)


def cmd_eval(args) -> None:
    from .eval.report import write_report
    from .eval.runner import evaluate, load_dreambooth_hard, load_pods
    from .pipeline import resolve_device
    from .server_side.synth import DIFFUSION_METHODS

    if args.layout == "dreambooth":
        evalset = load_dreambooth_hard(args.dataset, args.out / "work")
    else:
        evalset = load_pods(args.dataset)
        evalset.layout = args.layout  # procedural data is read with the PODS-style loader
    only = args.objects.split(",") if args.objects else None
    unknown = set(only or []) - {o.name for o in evalset.objects}
    if unknown:
        raise EdgePersrepError(f"{args.dataset}: no objects named {', '.join(sorted(unknown))}")
    steps = args.steps or (40 if args.quick else None)
    methods = [m for m in args.synth.split(",") if m]
    diffusion = None
    if set(methods) & set(DIFFUSION_METHODS):
        diffusion = _diffusion_options(args, device=resolve_device("auto"))
    report = evaluate(evalset, args.backbone, methods, args.out, steps=steps, only=only, diffusion=diffusion,
                      baselines=tuple(args.baseline), sd_model=args.sd_model)
    page = write_report(report, args.out)
    print(json.dumps(report["summary"], indent=1))
    for name, note in report["baselines"].items():
        if note["random_weights"]:
            print(f"note: {name} ran on {note['sd_model']}, a random-weight test model: its numbers mean nothing")
    print(f"report: {page}")


def cmd_make_dataset(args) -> None:
    from .eval.procedural import make_dataset

    print(f"dataset at {make_dataset(args.out, args.objects, args.seed)}")


COMMANDS = {"eval": cmd_eval, "make-dataset": cmd_make_dataset, "personalize": cmd_personalize, "synth": cmd_synth,
            "make-test-sd": cmd_make_test_sd, "export": cmd_export, "export-adapter": cmd_export_adapter,
            "enroll": cmd_enroll, "find": cmd_find, "retrieve": cmd_retrieve, "info": cmd_info, "upgrade": cmd_upgrade,
            "bench": cmd_bench}


def _notes_on_stderr() -> None:
    """Skipped files are a one-line note for the user, not a Python warning with a source line."""
    import warnings

    from .runtime.images import SkippedFilesWarning

    show = warnings.showwarning
    if getattr(show, "edge_persrep_notes", False):
        return  # installed by an earlier main() in this process

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkippedFilesWarning):
            print(f"edge-persrep: note: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.edge_persrep_notes = True
    warnings.showwarning = showwarning


def main(argv: list[str] | None = None) -> int:
    import os

    # Privacy: no dependency phones home. Weights come from local packages or files unless the
    # user asked for a hub backbone while online.
    for var in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")
    args = build_parser().parse_args(argv)
    _notes_on_stderr()
    set_threads(getattr(args, "threads", 0))
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        COMMANDS[args.command](args)
    except EdgePersrepError as exc:
        if args.debug:
            raise
        print(f"edge-persrep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (run the same command again to resume: finished work is kept)" if args.command in RESUMABLE else ""
        print(f"edge-persrep: interrupted{resume}", file=sys.stderr)
        return 130
    except OSError as exc:  # read-only directory, disk full, permission denied...
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"edge-persrep: error: {where}{exc.strerror or exc}; check the location is writable and has space "
              "(nothing already stored was changed)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
