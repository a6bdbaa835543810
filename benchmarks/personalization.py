"""Does personalization help? Pretrained vs personalized Lite0 on a hard protocol of real photos.

For each chosen DreamBooth subject (default: ones with same-category look-alikes), personalize the
backbone from its first 3 photos (`quick` preset, synth `augment`; negatives = the reference photos
of the other subjects of its category plus one photo of every other subject), then score both
models on the hard test set of eval/protocols.py (crops, occlusion, small scale, same-category
collages; fixed seed) built from the held-out photos of all 30 subjects:
    classification AP   label = the test image shows the subject; score = max cosine to its refs
    retrieval top-1     single-subject test images of the subject vs a gallery of all 30 subjects'
                        reference photos: is the nearest one the subject's?
    pointing            test images with the subject at a known place (collage cell or pasted
                        region): does the patch-similarity map peak inside it?

    python benchmarks/personalization.py --data ../shared/data/dreambooth --out runs/bench-personalization
Prints a table and writes OUT/personalization.json. Runs resume (each subject's run directory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.eval.metrics import average_precision, point_in_box
from edge_persrep.eval.protocols import PROTOCOL_SEED, hard_test_set
from edge_persrep.pipeline import export_pretrained, personalize
from edge_persrep.runtime import Bundle, Finder, PrototypeStore
from edge_persrep.runtime.dense import similarity_map
from edge_persrep.runtime.images import load_image

DEFAULT_SUBJECTS = "dog,dog2,dog3,dog6,cat,cat2,colorful_sneaker,shiny_sneaker"


def evaluate(bundle_dir: Path, subject: str, subjects, test, gallery_paths) -> dict:
    bundle = Bundle.load(bundle_dir)
    finder = Finder(bundle, PrototypeStore(bundle.model_sha256, bundle.layout.embedding_dim, bundle.layout.grid_dim))
    s = subjects[subject]
    finder.store.add(finder.make_prototype(subject, s.photos[:3], s.category))
    proto = finder.store.objects[subject]
    feats = finder.embed([t.image for t in test])
    scores = [float((proto.embeddings @ f.embedding).max()) for f in feats]
    labels = [subject in t.subjects for t in test]
    gallery = finder.embed([load_image(p) for p, _ in gallery_paths])
    gallery_owner = np.array([owner for _, owner in gallery_paths])
    g = np.stack([x.embedding for x in gallery])
    top1, pointing = [], []
    for t, f in zip(test, feats):
        if t.subjects == {subject}:
            top1.append(gallery_owner[int(np.argmax(g @ f.embedding))] == subject)
        if subject in t.boxes:
            sim = similarity_map(f.grid, proto.targets)
            y, x = np.unravel_index(int(np.argmax(sim)), sim.shape)
            h, w = sim.shape
            point = ((x + 0.5) * t.image.width / w, (y + 0.5) * t.image.height / h)
            pointing.append(point_in_box(point, t.boxes[subject]))
    per_kind = {}
    for kind in sorted({t.kind for t in test}):
        idx = [i for i, t in enumerate(test) if t.kind == kind or not labels[i]]
        if any(labels[i] and test[i].kind == kind for i in idx):
            keep = [i for i in idx if not labels[i] or test[i].kind == kind]
            per_kind[kind] = average_precision([scores[i] for i in keep], [labels[i] for i in keep])
    return {"ap": average_precision(scores, labels), "ap_by_kind": per_kind, "top1": float(np.mean(top1)),
            "pointing": float(np.mean(pointing)), "n_pos": int(sum(labels)), "n_test": len(test)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the DreamBooth dataset folder")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-personalization"))
    ap.add_argument("--subjects", default=DEFAULT_SUBJECTS)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int, help="override the preset's training steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    subjects = load_dreambooth(args.data)
    chosen = args.subjects.split(",")
    test = hard_test_set(subjects)
    gallery_paths = [(p, s.name) for s in subjects.values() for p in s.photos[:3]]
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.out / "pretrained"
    if not (pretrained / "bundle.json").is_file():
        export_pretrained("efficientnet_lite0", pretrained, force=True)

    rows = []
    for name in chosen:
        s = subjects[name]
        neg_dir = args.out / "negatives" / name
        if not neg_dir.is_dir():
            neg_dir.mkdir(parents=True)
            for o in subjects.values():
                if o.name == name:
                    continue
                for p in (o.photos[:3] if o.category == s.category else o.photos[:1]):
                    shutil.copy(p, neg_dir / f"{o.name}_{p.name}")
        started = time.time()
        bundle = personalize(s.photos[:3], name, s.category, args.out / "runs" / name, negatives=[neg_dir],
                             preset=args.preset, steps=args.steps, seed=args.seed, device="cpu")
        seconds = time.time() - started
        before = evaluate(pretrained, name, subjects, test, gallery_paths)
        after = evaluate(bundle, name, subjects, test, gallery_paths)
        rows.append({"subject": name, "category": s.category, "pretrained": before, "personalized": after,
                     "personalize_seconds": round(seconds, 1)})
        print(f"{name:18s} AP {before['ap']:.3f} -> {after['ap']:.3f}   top1 {before['top1']:.3f} -> "
              f"{after['top1']:.3f}   pointing {before['pointing']:.3f} -> {after['pointing']:.3f}", flush=True)

    def mean(model, key):
        return float(np.mean([r[model][key] for r in rows]))

    summary = {k: {"pretrained": mean("pretrained", k), "personalized": mean("personalized", k)}
               for k in ("ap", "top1", "pointing")}
    report = {"protocol": {"seed": PROTOCOL_SEED, "refs_per_subject": 3, "test_images": len(test),
                           "kinds": sorted({t.kind for t in test})},
              "preset": args.preset, "steps": args.steps, "subjects": rows, "mean": summary}
    (args.out / "personalization.json").write_text(json.dumps(report, indent=2))
    print()
    print("| subject | category | AP pre | AP pers | top-1 pre | top-1 pers | pointing pre | pointing pers |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["pretrained"], r["personalized"]
        print(f"| {r['subject']} | {r['category']} | {b['ap']:.3f} | {a['ap']:.3f} | {b['top1']:.3f} | {a['top1']:.3f} "
              f"| {b['pointing']:.3f} | {a['pointing']:.3f} |")
    m = summary
    print(f"| **mean** | | {m['ap']['pretrained']:.3f} | {m['ap']['personalized']:.3f} | {m['top1']['pretrained']:.3f} "
          f"| {m['top1']['personalized']:.3f} | {m['pointing']['pretrained']:.3f} | {m['pointing']['personalized']:.3f} |")
    print(f"\nwrote {args.out / 'personalization.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
