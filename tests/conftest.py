import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# `--train-precision auto` trains in bf16 on CPUs that compute it natively: the tests pin fp32, so
# that every machine trains the same numbers (tests of bf16 ask for it by name)
os.environ["EDGE_PERSREP_TRAIN_PRECISION"] = "fp32"


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def pretrained_bundle(tmp_path_factory) -> Path:
    """The real-weights Lite0 exported once per session (un-personalized, empty store)."""
    pytest.importorskip("torch")
    from edge_persrep.pipeline import export_pretrained

    out = tmp_path_factory.mktemp("bundles") / "lite0"
    return export_pretrained("efficientnet_lite0", out)


def run_cli(*args, check=True):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edge_persrep.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def personalized_run(tmp_path_factory, examples):
    """`personalize` on the example dog, 4 training steps: a complete run directory."""
    pytest.importorskip("torch")
    run = tmp_path_factory.mktemp("run") / "run"
    out = run_cli("personalize", examples / "dog", "--name", "my_dog", "--category", "dog", "--out", run,
                  "--negatives", examples / "negatives", "--steps", "4", "--seed", "1")
    (run.parent / "personalize.stdout").write_text(out.stdout)  # what the user read at the end
    (run.parent / "personalize.stderr").write_text(out.stderr)
    return run


@pytest.fixture()
def bundle_copy(pretrained_bundle, tmp_path) -> Path:
    """A private copy a test may corrupt."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(pretrained_bundle, dst)
    return dst


def paste_scene(photo: Image.Image, background: Image.Image, box: tuple[int, int, int, int],
                side: int = 384) -> Image.Image:
    scene = background.convert("RGB").resize((side, side))
    x0, y0, x1, y1 = box
    scene.paste(photo.convert("RGB").resize((x1 - x0, y1 - y0)), (x0, y0))
    return scene


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_report(tmp_path_factory):
    """`eval` on a 4-object procedural set (2 evaluated), one synthesis method against pretrained, 2 training
    steps: a complete report. (A second method ran the same loop again and doubled its 90 s.)"""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("eval")
    run_cli("make-dataset", "procedural", "--out", root / "data", "--objects", "4", "--seed", "1")
    run_cli("eval", "--dataset", root / "data", "--layout", "procedural", "--synth", "cutpaste",
            "--objects", "mug1,ball1", "--steps", "2", "--out", root / "report")
    return root / "report"


def box_masks(photo_dir: Path, mask_dir: Path, parts: int = 4) -> Path:
    """A mask per photo (named like it) marking a centred box: the middle (parts - 2) / parts of each side."""
    from edge_persrep.runtime import list_images

    mask_dir.mkdir()
    for photo in list_images([photo_dir]):
        w, h = Image.open(photo).size
        m = np.zeros((h, w), np.uint8)
        m[h // parts: (parts - 1) * h // parts, w // parts: (parts - 1) * w // parts] = 255
        Image.fromarray(m).save(mask_dir / f"{photo.stem}.png")
    return mask_dir


def write_format1_store(store, path: Path, drop_scoring: bool = False) -> None:
    """A prototype store as edge-persrep wrote it before bundle format 2 (a numpy zip with the JSON
    metadata as a uint8 array; with `drop_scoring`, as written before region scoring), for the
    tests that old bundles still load and upgrade."""
    import hashlib
    import json

    arrays = {}
    entries = []
    for i, p in enumerate(store.objects.values()):
        arrays.update({f"o{i}_embeddings": p.embeddings, f"o{i}_targets": p.targets,
                       f"o{i}_box_features": p.box_features})
        arrays.update({f"o{i}_photo{j}": np.frombuffer(b, np.uint8) for j, b in enumerate(p.photos)})
        entry = {"name": p.name, "category": p.category, "threshold": p.threshold, "photos": len(p.photos)}
        entries.append(entry if drop_scoring else {**entry, "scoring": p.scoring})
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    meta = {"format_version": 1, "model_sha256": store.model_sha256, "embedding_dim": store.embedding_dim,
            "grid_dim": store.grid_dim, "objects": entries, "arrays_sha256": digest.hexdigest()}
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
