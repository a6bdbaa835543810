"""Which fixed export size for a backbone? Classification AP of the pretrained model on the
DreamBooth photos (first 3 photos of each subject = references, the rest = queries against all
subjects) with the whole photo stretched to S x S, as the runtime does.

    python benchmarks/export_size.py --data ../shared/data/dreambooth [--sizes 224,320,448]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from edge_persrep.eval.bench import print_and_save
from edge_persrep.eval.datasets import load_dreambooth
from edge_persrep.runtime.images import load_image, resize_to_input
from edge_persrep.runtime.metrics import average_precision
from edge_persrep.server_side.backbones import create_backbone
from edge_persrep.server_side.embedder import ImageEmbedder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sizes", default="224,320,448")
    ap.add_argument("--out", type=Path, default=Path("runs/export_size.json"))
    args = ap.parse_args(argv)
    subjects = load_dreambooth(args.data)
    photos = {s.name: [load_image(p) for p in s.photos] for s in subjects.values()}
    wrapper = ImageEmbedder(create_backbone(args.backbone)).eval()
    report = {"backbone": args.backbone}
    for size in map(int, args.sizes.split(",")):
        with torch.no_grad():
            emb = {n: wrapper(torch.from_numpy(np.stack([resize_to_input(p, size) for p in ps])))[0].numpy()
                   for n, ps in photos.items()}
        aps = []
        for name in emb:
            scores, labels = [], []
            for other, e in emb.items():
                scores += list((e[3:] @ emb[name][:3].T).max(axis=1))
                labels += [other == name] * len(e[3:])
            aps.append(average_precision(scores, labels))
        report[f"mean_classification_ap_{size}px"] = round(float(np.mean(aps)), 4)
    print_and_save(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
