"""`edge-persrep eval`: pretrained vs personalized, on the paper's four tasks, per split.

Each object gets its own personalized model per synthesis method (as in the paper); the
pretrained backbone is shared. For object o and a model M:
    classification  AP and best F1 over the split's test images; label = o is in the image;
                    score = max cosine to o's training photos
    retrieval       queries = the split's images whose main object is o; gallery = every object's
                    training photos; NDCG, MRR, top-1/5/10
    detection       one region per test image (the largest blob of the similarity map; confidence =
                    max cosine of its box-pooled patches to the references'); COCO mAP and mAP50,
                    images without o count as negatives (their detections are false positives)
    segmentation    the same with masks (where the dataset has them)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..runtime import Bundle, Finder, PrototypeStore, metrics
from ..runtime.errors import EdgePersrepError
from ..runtime.images import list_images
from ..server_side.options import DEFAULT_PRESET


@dataclass
class TestItem:
    path: Path
    split: str
    main: str  # the object the image was made for
    instances: dict[str, dict] = field(default_factory=dict)  # name -> {"box": [..] | None, "mask": Path | None}


@dataclass
class EvalObject:
    name: str
    category: str
    train: list[Path]
    train_masks: Path | None = None  # folder of masks named like the training photos


@dataclass
class EvalSet:
    layout: str
    objects: list[EvalObject]
    tests: list[TestItem]
    # identity-disjoint protocol (DreamBooth): per object, the subjects training may see as negatives;
    # its test images and retrieval gallery then show only the others (protocols.identity_split)
    seen: dict[str, tuple[str, ...]] | None = None

    def negatives_for(self, obj: EvalObject) -> list[EvalObject]:
        if self.seen is None:
            return [o for o in self.objects if o.name != obj.name]
        return [o for o in self.objects if o.name in self.seen[obj.name]]

    def shown_to(self, obj: EvalObject) -> set[str] | None:
        """The subjects object `obj`'s test and gallery may show (None: all of them)."""
        if self.seen is None:
            return None
        return {o.name for o in self.objects if o.name not in self.seen[obj.name]}


def load_pods(root: Path) -> EvalSet:
    """PODS-style layout (what `make-dataset procedural` writes; see eval/procedural.py)."""
    classes, notes = root / "classes.txt", root / "annotations.json"
    if not classes.is_file() or not notes.is_file():
        raise EdgePersrepError(f"{root}: expected classes.txt and annotations.json (PODS-style layout; "
                               "see `edge-persrep make-dataset procedural`)")
    objects = []
    for line in classes.read_text().splitlines():
        if "," in line:
            name, category = line.strip().split(",", 1)
            masks = root / name / "masks" / "train"
            objects.append(EvalObject(name, category, list_images([root / name / "train"]),
                                      masks if masks.is_dir() else None))
    tests = []
    for e in json.loads(notes.read_text())["images"]:
        inst = {n: {"box": v.get("box"), "mask": root / v["mask"] if v.get("mask") else None}
                for n, v in e["instances"].items()}
        tests.append(TestItem(root / e["file"], e["split"], e["object"], inst))
    return EvalSet("pods", objects, tests)


def load_dreambooth_hard(root: Path, work: Path) -> EvalSet:
    """The DreamBooth photos under the hard protocol (eval/protocols.py), written to `work`, made
    identity-disjoint: each object trains against its seen subjects only,
    and is tested and retrieved only among the others."""
    from .datasets import load_dreambooth
    from .protocols import hard_test_set, identity_split

    all_subjects = load_dreambooth(root)
    test_dir = work / "testset"
    test_dir.mkdir(parents=True, exist_ok=True)
    tests = []
    for i, t in enumerate(hard_test_set(all_subjects)):
        path = test_dir / f"{i:04d}_{t.kind}.jpg"
        if not path.exists():
            t.image.save(path, quality=92)
        main = t.source.split("/")[0]
        tests.append(TestItem(path, t.kind, main, {n: {"box": list(t.boxes[n]) if n in t.boxes else None, "mask": None}
                                                   for n in t.subjects}))
    objects = [EvalObject(n, s.category, s.photos[:3]) for n, s in all_subjects.items()]
    seen = {n: identity_split(all_subjects, n).seen for n in all_subjects}
    return EvalSet("dreambooth", objects, tests, seen)


def _negatives_dir(evalset: EvalSet, obj: EvalObject, work: Path) -> Path:
    """Training negatives (EvalSet.negatives_for): all training photos of a same-category object,
    one of any other's."""
    from .protocols import write_negatives

    return write_negatives(work / "negatives" / obj.name,
                           {o.name: o.train if o.category == obj.category else o.train[:1]
                            for o in evalset.negatives_for(obj)})


def training_masks(obj: EvalObject) -> list[np.ndarray] | None:
    """The object's training-photo masks (bool, photo-sized), if the dataset has them."""
    if obj.train_masks is None:
        return None
    return [np.asarray(Image.open(obj.train_masks / f"{p.stem}.png").convert("L")) >= 128 for p in obj.train]


def _score_object(finder: Finder, obj: EvalObject, evalset: EvalSet, feats, gallery, gallery_owner, examples) -> dict:
    layout = finder.bundle.layout
    store = PrototypeStore(finder.bundle.model_sha256, layout.embedding_dim, layout.grid_dim)
    finder.store = store
    store.add(finder.make_prototype(obj.name, obj.train, obj.category, masks=training_masks(obj)))
    proto = store.objects[obj.name]
    results = {}
    shown = evalset.shown_to(obj)
    if shown is not None:  # identity-disjoint: no image or gallery photo of a subject training saw
        keep = np.isin(gallery_owner, sorted(shown))
        gallery, gallery_owner = gallery[keep], gallery_owner[keep]
    for split, idx, labels in scored_splits(evalset, obj):
        scores = [float((proto.embeddings @ feats[i].embedding).max()) for i in idx]
        r = {"classification_ap": metrics.average_precision(scores, labels),
             "classification_f1": metrics.best_f1(scores, labels)}
        queries = [i for i in idx if evalset.tests[i].main == obj.name]
        ranked = []
        for i in queries:
            order = np.argsort(-(gallery @ feats[i].embedding), kind="stable")
            ranked.append(gallery_owner[order] == obj.name)
        if ranked:
            ranked = np.array(ranked)
            r.update({"retrieval_ndcg": metrics.ndcg(ranked), "retrieval_mrr": metrics.mean_reciprocal_rank(ranked),
                      **{f"retrieval_top{k}": metrics.top_k_accuracy(ranked, k) for k in (1, 5, 10)}})
        boxes_gt, masks_gt = ground_truth(evalset, obj, idx)
        if boxes_gt:
            box_dets, mask_dets = [], []
            for i in idx:
                match = finder.classify(feats[i])[0]
                match = finder.locate(feats[i], match, with_mask=bool(masks_gt))
                conf = match.box_score if match.box_score is not None else -1.0
                box_dets.append((i, conf, match.box))
                if masks_gt:
                    mask_dets.append((i, conf, match.mask if match.box is not None else None))
                if i in boxes_gt:
                    examples.append({"object": obj.name, "split": split, "image": str(evalset.tests[i].path),
                                     "iou": metrics.box_iou(match.box, boxes_gt[i]) if match.box else 0.0,
                                     "box": match.box, "gt": boxes_gt[i], "score": conf})
            r.update(dense_metrics(box_dets, mask_dets, boxes_gt, masks_gt))
        results[split] = r
    return results


def scored_splits(evalset: EvalSet, obj: EvalObject):
    """Per split that shows the object: (split, the test images it is scored on, their labels);
    identity-disjoint sets leave out images of subjects training saw."""
    shown = evalset.shown_to(obj)
    for split in sorted({t.split for t in evalset.tests}):
        idx = [i for i, t in enumerate(evalset.tests)
               if t.split == split and (shown is None or set(t.instances) <= shown)]
        labels = [obj.name in evalset.tests[i].instances for i in idx]
        if any(labels):
            yield split, idx, labels


def ground_truth(evalset: EvalSet, obj: EvalObject, idx: list[int]) -> tuple[dict, dict]:
    """The object's known boxes and mask files among test images `idx`: ({i: box}, {i: mask path})."""
    shown = [(i, evalset.tests[i].instances[obj.name]) for i in idx if obj.name in evalset.tests[i].instances]
    return {i: x["box"] for i, x in shown if x["box"]}, {i: x["mask"] for i, x in shown if x["mask"]}


def dense_metrics(box_dets: list, mask_dets: list, boxes_gt: dict, masks_gt: dict) -> dict:
    """COCO mAP and mAP50 of one region per image: detection, and segmentation where masks are known."""
    det = metrics.coco_map(box_dets, boxes_gt)
    out = {"detection_map": det["map"], "detection_map50": det["map50"]}
    if masks_gt:
        gt = {i: np.asarray(Image.open(p).convert("L")) >= 128 for i, p in masks_gt.items()}
        seg = metrics.coco_map(mask_dets, gt, iou=metrics.mask_iou)
        out.update({"segmentation_map": seg["map"], "segmentation_map50": seg["map50"]})
    return out


def evaluate(evalset: EvalSet, backbone: str, methods: list[str], out: Path, steps: int | None = None,
             preset: str = DEFAULT_PRESET, seed: int = 0, only: list[str] | None = None, diffusion=None,
             baselines: tuple[str, ...] = (), sd_model: str | None = None) -> dict:
    """`only`: evaluate these objects (all by default); the others stay in the gallery and among the
    negatives (identity-disjoint sets: as EvalSet.seen allows). `diffusion` (DiffusionOptions)
    configures the Stable Diffusion methods, which run on the GPU when there is one (the others on
    the CPU, for reproducible figures). `baselines`: "pdm" (eval/pdm.py, zero-shot matching with
    the diffusion features of `sd_model`), scored beside the backbones on the same protocol."""
    from ..pipeline import PersonalizeRequest, export_pretrained, personalize
    from ..server_side.synth import DIFFUSION_METHODS, METHODS_NEEDING_MASKS

    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    timings: dict[str, float] = {}
    started = time.time()
    pretrained_dir = work / "models" / "pretrained"
    if not (pretrained_dir / "bundle.json").is_file():
        export_pretrained(backbone, pretrained_dir, force=True)
    timings["export_pretrained_s"] = round(time.time() - started, 1)

    results: dict = {"pretrained": {}}
    examples: dict = {"pretrained": []}
    started = time.time()
    chosen = [o for o in evalset.objects if only is None or o.name in only]
    results["pretrained"] = score_bundle(pretrained_dir, evalset, chosen, examples["pretrained"])
    timings["eval_pretrained_s"] = round(time.time() - started, 1)
    notes = {}
    for baseline in baselines:
        if baseline != "pdm":
            raise EdgePersrepError(f"unknown baseline '{baseline}': use pdm")
        if not sd_model:
            raise EdgePersrepError("--baseline pdm needs --sd-model (a Stable Diffusion hub id or folder)")
        from .pdm import evaluate_pdm

        started = time.time()
        device = "cuda" if diffusion is not None and getattr(diffusion, "device", "cpu") == "cuda" else "cpu"
        pdm = evaluate_pdm(evalset, chosen, sd_model, work / "pdm", device=device)
        results["pdm"], examples["pdm"] = pdm.pop("results"), []
        notes["pdm"] = pdm
        timings["eval_pdm_s"] = round(time.time() - started, 1)
    for method in methods:
        results[method], examples[method] = {}, []
        for obj in chosen:
            if method in METHODS_NEEDING_MASKS and obj.train_masks is None:
                continue  # these need masks; this dataset has none
            started = time.time()
            bundle = personalize(PersonalizeRequest(
                obj.train, obj.name, obj.category, work / "models" / method / obj.name, backbone=backbone,
                synth_method=method, negatives=[_negatives_dir(evalset, obj, work)], masks=obj.train_masks,
                preset=preset, steps=steps, seed=seed, device="auto" if method in DIFFUSION_METHODS else "cpu",
                diffusion=diffusion))
            timings[f"personalize_{method}_{obj.name}_s"] = round(time.time() - started, 1)
            started = time.time()
            results[method].update(score_bundle(bundle, evalset, [obj], examples[method]))
            timings[f"eval_{method}_{obj.name}_s"] = round(time.time() - started, 1)
    return {"layout": evalset.layout, "backbone": backbone, "methods": methods, "preset": preset, "steps": steps,
            "objects": [o.name for o in chosen], "splits": sorted({t.split for t in evalset.tests}),
            "results": results, "summary": summarize(results), "timings": timings, "examples": examples,
            "baselines": notes}


def score_bundle(bundle_dir: Path, evalset: EvalSet, objects: list[EvalObject], examples: list | None = None,
                 finder_class: type[Finder] = Finder) -> dict:
    """{object: {split: metrics}} for `objects` under one bundle's model: every test image and
    gallery photo embedded once (one model run each), each object enrolled from its training photos.
    `finder_class`: a Finder with another rule to compare (benchmarks)."""
    bundle = Bundle.load(bundle_dir)
    layout = bundle.layout
    finder = finder_class(bundle, PrototypeStore(bundle.model_sha256, layout.embedding_dim, layout.grid_dim))
    feats = finder.embed([t.path for t in evalset.tests])
    gallery = np.stack([g.embedding for g in finder.embed([p for o in evalset.objects for p in o.train])])
    gallery_owner = np.array([o.name for o in evalset.objects for _ in o.train])
    examples = [] if examples is None else examples
    return {obj.name: _score_object(finder, obj, evalset, feats, gallery, gallery_owner, examples) for obj in objects}


def summarize(results: dict) -> dict:
    """Mean over objects: {model: {split | "all": {metric: value}}} ("all" averages the splits)."""
    out = {}
    for model, per_object in results.items():
        table: dict = {}
        for obj_results in per_object.values():
            for split, values in obj_results.items():
                for key in (split, "all"):
                    for metric, v in values.items():
                        table.setdefault(key, {}).setdefault(metric, []).append(v)
        out[model] = {s: {m: float(np.mean(v)) for m, v in ms.items()} for s, ms in table.items()}
    return out
