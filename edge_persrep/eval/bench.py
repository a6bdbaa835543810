"""`edge-persrep bench`: median per-image latency, torch eager vs ONNX Runtime fp32, and each runtime
task, all measured in one run on the same photos (machines are noisy: compare within a run)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

SOURCE_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"  # in a checkout only


def example_photos(examples: Path | None) -> Path:
    """The sample photos bench times on (dog/, dog_heldout/, heldout_others/, negatives/,
    backgrounds/): `--examples DIR`, else a checkout's examples/images. A pip-installed package does
    not ship photos, so there the folder must be given."""
    from ..runtime.errors import EdgePersrepError

    root = examples if examples is not None else SOURCE_EXAMPLES
    needed = ("dog", "dog_heldout", "heldout_others", "negatives", "backgrounds")
    missing = [d for d in needed if not (root / d).is_dir()]
    if missing:
        raise EdgePersrepError(f"{root}: bench needs the sample photos ({', '.join(missing)} missing); pass "
                               "--examples DIR, e.g. examples/images of an edge-persrep checkout")
    return root


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_bench(backbone: str, images: list[str] | None, repeats: int, threads: int, out: Path,
              examples: Path | None = None) -> dict:
    import torch

    from ..pipeline import export_pretrained
    from ..runtime import Finder, list_images, load_image
    from ..runtime.bundle import make_session
    from ..runtime.images import resize_to_input
    from ..server_side.backbones import create_backbone
    from ..server_side.embedder import ImageEmbedder

    if threads:
        torch.set_num_threads(threads)
    examples = example_photos(examples)
    paths = list_images(images or [examples / "dog_heldout", examples / "heldout_others"])
    photos = [load_image(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = export_pretrained(backbone, Path(tmp) / "bundle")
        finder = Finder.open(bundle_dir)
        if threads:
            finder.bundle._session = make_session(finder.bundle.model_path, ["CPUExecutionProvider"], threads)
        # with the sample negatives, as a user enrols (and the demo does): the dog is then found in
        # photos[0], so find (all) below times its box and mask too (without them it drew neither)
        finder.enroll("object", list_images([examples / "dog"]), negatives=list_images([examples / "negatives"]))
        size = finder.bundle.input_size
        batch1 = resize_to_input(photos[0], size)[None]
        batch8 = np.repeat(batch1, 8, axis=0)
        wrapper = ImageEmbedder(create_backbone(backbone)).eval()

        def torch_run(batch):
            with torch.inference_mode():
                return wrapper(torch.from_numpy(batch))

        rows = {
            "torch_eager_b1": median_ms(lambda: torch_run(batch1), repeats),
            "ort_fp32_b1": median_ms(lambda: finder.bundle.run(batch1), repeats),
            "torch_eager_b8_per_image": median_ms(lambda: torch_run(batch8), max(3, repeats // 4)) / 8,
            "ort_fp32_b8_per_image": median_ms(lambda: finder.bundle.run(batch8), max(3, repeats // 4)) / 8,
        }
        features = finder.embed([photos[0]])[0]

        def uncached(task):  # the Finder pools a photo's windows once: time each call as a new photo's
            finder._windows_of = None
            return finder.find(features, task)

        rows["runtime_embed"] = median_ms(lambda: finder.embed([photos[0]]), repeats)
        rows["runtime_classify"] = median_ms(lambda: uncached("classify"), repeats)
        rows["runtime_detect"] = median_ms(lambda: uncached("detect"), repeats)
        rows["runtime_segment"] = median_ms(lambda: uncached("segment"), repeats)
        rows["runtime_find_all_per_image"] = median_ms(
            lambda: finder.find(finder.embed([photos[0]])[0], "all"), repeats)
        found = finder.find(features, "all")[0]
        rows.update(find_parts(finder, photos[0], repeats))
        adapter = timing_adapter(backbone, size, Path(tmp) / "adapter")
        base = make_session(adapter / "lora_base.onnx", ["CPUExecutionProvider"], threads)
        rows.update(frame_with_objects(finder, photos[0], repeats, adapters=(base, adapter / "object.onnx_adapter")))
    report = {
        "backbone": backbone, "input_size": size, "repeats": repeats, "threads": threads or "default",
        "provider": finder.bundle.provider,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "timed_find_drew_box_and_mask": found.present and found.box is not None and found.mask is not None,
        "median_ms": {k: round(v, 3) for k, v in rows.items()},
        "ratios": {"torch_over_ort_b1": round(rows["torch_eager_b1"] / rows["ort_fp32_b1"], 2),
                   # timed side by side in one loop (find_parts): the figure issue "Find it in clutter" sets
                   "find_all_over_session_run": round(rows["side_by_side_find_all"]
                                                      / rows["side_by_side_bare_session_run"], 2),
                   "find_all_over_session_run_separate_loops": round(rows["runtime_find_all_per_image"]
                                                                     / rows["ort_fp32_b1"], 2)},
    }
    print(f"backbone {backbone}, input {size}px, median of {repeats} runs, threads {report['threads']}, "
          f"provider {report['provider']}, timed find drew a box and a mask: {report['timed_find_drew_box_and_mask']}")
    print("| measurement | median ms |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    for k, v in report["ratios"].items():
        print(f"| ratio {k} | {v:.2f}x |")
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


def find_parts(finder, photo, repeats: int) -> dict[str, float]:
    """Where a full find's time goes, and a bare `session.run` on a ready input, timed side by side
    in one interleaved loop (each iteration: the bare run, then photo -> model input, session.run,
    classify, box + mask), so that the two sides of find / bare run meet the same moments of a
    shared machine. Median ms of each part, of the whole find, and of the bare run."""
    from ..runtime.finder import ImageFeatures
    from ..runtime.images import resize_to_input

    ready = resize_to_input(photo, finder.bundle.input_size)[None]
    parts: dict[str, list[float]] = {"side_by_side_bare_session_run": [], "find_part_resize": [],
                                     "find_part_session_run": [], "find_part_classify": [], "find_part_locate": [],
                                     "side_by_side_find_all": []}
    for i in range(repeats + 3):
        t_bare = time.perf_counter()
        finder.bundle.run(ready)
        t0 = time.perf_counter()
        batch = resize_to_input(photo, finder.bundle.input_size)[None]
        t1 = time.perf_counter()
        embeddings, grids = finder.bundle.run(batch)
        t2 = time.perf_counter()
        features = ImageFeatures(embeddings[0], grids[0], photo.width, photo.height)
        matches = finder.classify(features)
        t3 = time.perf_counter()
        [finder.locate(features, m, with_mask=True) for m in matches]  # present or not: the worst case
        t4 = time.perf_counter()
        if i >= 3:  # warm-up
            spans = ((t_bare, t0), (t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4))
            for key, (a, b) in zip(parts, spans):
                parts[key].append((b - a) * 1000)
    return {k: statistics.median(v) for k, v in parts.items()}


def frame_with_objects(finder, photo, repeats: int, counts: tuple[int, ...] = (1, 5, 20),
                       adapters: tuple | None = None) -> dict[str, float]:
    """One frame (one model run) answered for N enrolled objects, every task: the enrolled object
    plus N - 1 others (random unit prototypes: absent, as most of a user's things are from any one
    frame). Median ms per frame for each N. With `adapters` (a LoRA base session, an adapter
    file), also the per-object design: each object answered by its own run of the base with the
    adapter active (runtime.adapters), N model runs a frame."""
    import numpy as np

    from ..runtime import Bundle, Finder, Prototype, PrototypeStore
    from ..runtime.adapters import AdapterSession, PerObjectFinder

    (real,) = finder.store.objects.values()
    rng = np.random.default_rng(0)

    def unit(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    rows = {}
    for n in counts:
        store = PrototypeStore(finder.store.model_sha256, finder.store.embedding_dim, finder.store.grid_dim)
        store.add(real)
        for k in range(n - 1):
            store.add(Prototype(f"other{k}", "thing", unit(real.embeddings.shape), unit(real.targets.shape),
                                unit(real.box_features.shape), real.threshold))
        many = Finder(finder.bundle, store)
        rows[f"frame_all_tasks_{n}_objects"] = median_ms(lambda: many.find(many.embed([photo])[0], "all"), repeats)
        if adapters is not None:  # the per-object design: each object its own adapter, one base run each
            finders = []
            for p in store.objects.values():
                bundle = Bundle.load(finder.bundle.root)
                bundle.use_session(AdapterSession(adapters[0], adapters[1]))
                own = PrototypeStore(store.model_sha256, store.embedding_dim, store.grid_dim)
                own.add(p)
                finders.append(Finder(bundle, own))
            per_object = PerObjectFinder(finders)
            rows[f"frame_all_tasks_{n}_objects_adapters"] = median_ms(lambda: per_object.find(photo), repeats)
    return rows


def timing_adapter(backbone: str, size: int, folder: Path) -> Path:
    """A LoRA base graph and an adapter for timing the per-object design: the backbone with the
    `quick` preset's LoRA, fresh (B = 0: the adapter's values do not change a run's time)."""
    from ..export.ort_lora import export_lora_adapter, export_lora_base
    from ..server_side.backbones import BackboneSource
    from ..server_side.contrastive import add_lora, get_preset

    source = BackboneSource.given(backbone)
    add_lora(source.build(), get_preset("quick")).save_pretrained(str(folder / "peft"))
    export_lora_base(source, folder / "peft", folder / "lora_base.onnx", size)
    export_lora_adapter(source, folder / "peft", folder / "lora_base.onnx", folder / "object.onnx_adapter")
    return folder


def run_variants_bench(backbones: list[str], repeats: int, out: Path, random_init: bool = False,
                       examples: Path | None = None) -> dict:
    """Per backbone x variant: file size, median latency (batch 1 and 8), cosine and AP vs fp32.

    Calibration (int8) and checks use disjoint example photos: calibration = the test backgrounds
    and every other negative; checks = the dog's references (prototype), its held-out photos
    (positives), the other negatives and other animals (negatives). int8 is built with the gate
    forced so that its row is shown even when it fails; the `gate` column says whether it passed.
    """
    import torch

    from ..export.bundle_writer import write_bundle
    from ..export.precision import CheckSet, Gate, gate_verdict, measure
    from ..export.variants import add_variants
    from ..runtime import list_images, load_image
    from ..runtime.bundle import make_session
    from ..runtime.images import resize_to_input
    from ..server_side.backbones import create_backbone
    from ..server_side.embedder import ImageEmbedder

    examples = example_photos(examples)
    backgrounds = examples / "backgrounds"
    negatives = list_images([examples / "negatives"])
    rows = []
    for name in backbones:
        model = create_backbone(name, pretrained=not random_init)
        size = model.spec.preprocess.export_size

        def inputs(paths):
            return np.stack([resize_to_input(load_image(p), size) for p in paths])

        calibration = inputs(list_images([backgrounds]) + negatives[0::2])
        checks = CheckSet(inputs(list_images([examples / "dog"])), inputs(list_images([examples / "dog_heldout"])),
                          inputs(negatives[1::2] + list_images([examples / "heldout_others"])))
        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "b"
            write_bundle(model, bundle, [], None)
            add_variants(bundle, model, ["onnx", "ort"], ["fp32", "fp16", "int8"], calibration, checks, Gate(),
                         force_int8=True)
            manifest = json.loads((bundle / "bundle.json").read_text())
            files = {"fp32": manifest["files"]["model"]["path"],
                     **{k: v["path"] for k, v in manifest["variants"].items()}}
            x1, x8 = checks.all[:1], np.repeat(checks.all[:1], 8, axis=0)
            wrapper = ImageEmbedder(model).eval()
            with torch.inference_mode():
                eager = median_ms(lambda: wrapper(torch.from_numpy(x1)), repeats)
            rows.append({"backbone": name, "variant": "torch eager", "mb": None, "b1_ms": round(eager, 2)})
            for variant, file in files.items():
                session = make_session(bundle / file, ["CPUExecutionProvider"])
                fixed = session.get_inputs()[0].shape[0] == 1
                check = measure(bundle / files["fp32"], bundle / file, checks)
                rows.append({
                    "backbone": name, "variant": variant, "mb": round((bundle / file).stat().st_size / 1e6, 1),
                    "b1_ms": round(median_ms(lambda: session.run(None, {"image": x1}), repeats), 2),
                    "b8_ms_per_image": None if fixed else round(
                        median_ms(lambda: session.run(None, {"image": x8}), max(3, repeats // 4)) / 8, 2),
                    "min_cos": check["min_cosine_embedding"], "grid_cos": check["mean_cosine_patch_grid"],
                    "ap": check["ap"], "ap_fp32": check["ap_fp32"],
                    "gate": "pass" if not gate_verdict(check, Gate()) else "FAIL"})
    fp32 = {r["backbone"]: r["b1_ms"] for r in rows if r["variant"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = round(fp32[r["backbone"]] / r["b1_ms"], 2)
    print("| backbone | variant | MB | b1 ms | b8 ms/img | x fp32 | min cos | grid cos | AP | AP fp32 | gate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['variant']} | {r['mb'] or ''} | {r['b1_ms']} | {r.get('b8_ms_per_image') or ''} "
              f"| {r['speedup_vs_fp32']} | {r.get('min_cos', '')} | {r.get('grid_cos', '')} | {r.get('ap', '')} "
              f"| {r.get('ap_fp32', '')} | {r.get('gate', '')} |")
    report = {"repeats": repeats, "random_init": random_init, "machine": {"cpu_count": os.cpu_count(),
              "platform": platform.platform()}, "rows": rows}
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


def print_and_save(report: dict, out: Path) -> None:
    """A flat benchmark report as a two-column Markdown table on stdout, and as JSON at `out`."""
    print("| measurement | value |")
    print("|---|---|")
    for key, value in report.items():
        print(f"| {key} | {value} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
