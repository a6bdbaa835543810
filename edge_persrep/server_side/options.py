"""The server side's named choices, torch-free so the CLI can offer them without importing torch.

Defaults live in the typed configs that use them (DreamBoothConfig, SamplingConfig,
DiffusionOptions, TrainConfig, Gate); the CLI passes only what the user gave, so no default is
written twice. What both the CLI and those configs need to name lives here.
"""

DEFAULT_BACKBONE = "efficientnet_lite0"  # the edge default: real weights ship as a pip package
# backbones.py's registry, by name (a test keeps the two equal): the CLI's help lists them without torch
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "dinov2_vits14", "dinov2_vitb14", "clip_vitb16", "mae_vitb16")
DREAMBOOTH_MODES = ("lora", "full")  # lora: consumer GPUs; full: the paper
DIFFUSION_PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # auto: fp16 on CUDA, fp32 on CPU
SCHEDULER_STEPS = {"pndm": 50, "ddim": 50, "dpm++": 25}  # name -> default steps (pndm is SD 1.5's own: the paper's)
CALIBRATE_ON = ("training", "held-out")  # personalize --calibrate-on: the first is the default
DEFAULT_SYNTH = "augment"  # personalize --synth: no GPU, no downloads
DEFAULT_PRESET = "quick"  # personalize --preset: minutes on a CPU (contrastive.PRESETS)
TRAIN_PRECISIONS = ("fp32", "bf16")  # TrainConfig.precision; a bf16 quick step 0.95x an fp32 one (AVX512-BF16 CPU)
TRAIN_PRECISION_CHOICES = ("auto",) + TRAIN_PRECISIONS  # personalize --train-precision; auto (the default): bf16
# on a CPU that computes it natively for a cached trunk (quick), else fp32 (contrastive.resolve_precision)
FILTER_MODES = ("global", "patch")  # the generated-positive filter's score (synth/filtering.py); first: default
PATCH_THRESHOLD = 0.47  # patch mode: keeps about 70% of faithful photos, as 0.6 does globally (filter_threshold.py)
