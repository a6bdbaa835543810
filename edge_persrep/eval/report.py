"""Write an evaluation as `report.json` and a self-contained `index.html` (inline SVG charts, the
best and worst localisation cases as overlay images in `img/`)."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image, ImageDraw

from ..runtime.files import atomic_write_bytes, atomic_write_json

TASKS = [("classification_ap", "classification AP"), ("retrieval_top1", "retrieval top-1"),
         ("retrieval_mrr", "retrieval MRR"),
         ("detection_map50", "detection mAP50"), ("detection_map", "detection mAP"),
         ("segmentation_map50", "segmentation mAP50"), ("segmentation_map", "segmentation mAP")]
COLOURS = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def _bars(summary: dict, models: list[str]) -> str:
    rows = [(label, [summary.get(m, {}).get("all", {}).get(key) for m in models]) for key, label in TASKS]
    rows = [(label, vals) for label, vals in rows if any(v is not None for v in vals)]
    height, bar = 18, 200
    svg = [f'<svg width="560" height="{len(rows) * (len(models) * height + 14) + 30}" role="img">']
    y = 10
    for label, vals in rows:
        svg.append(f'<text x="0" y="{y + 12}" font-size="12">{html.escape(label)}</text>')
        for m, v in zip(models, vals):
            if v is None:
                continue
            colour = COLOURS[models.index(m) % len(COLOURS)]
            svg.append(f'<rect x="150" y="{y}" width="{v * bar:.1f}" height="{height - 4}" fill="{colour}"/>'
                       f'<text x="{155 + v * bar:.1f}" y="{y + 11}" font-size="11">{m}: {v:.3f}</text>')
            y += height
        y += 14
    svg.append("</svg>")
    return "".join(svg)


def _overlay(example: dict, out: Path, colour) -> None:
    image = Image.open(example["image"]).convert("RGB")
    d = ImageDraw.Draw(image)
    d.rectangle(example["gt"], outline=(255, 255, 255), width=2)
    if example["box"]:
        d.rectangle(example["box"], outline=colour, width=3)
    image.thumbnail((256, 256))
    image.save(out, quality=88)


def write_report(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    img = out / "img"
    img.mkdir(exist_ok=True)
    models = list(report["results"])
    summary = report["summary"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>edge-persrep evaluation</title>"
             "<style>body{font-family:sans-serif;margin:24px;max-width:1200px}"
             "table{border-collapse:collapse;margin:8px 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}.loss{background:#fdd}"
             ".gain{background:#dfd}img{margin:3px;border:1px solid #999}</style></head><body>",
             f"<h1>Pretrained vs personalized: {html.escape(report['backbone'])} on "
             f"{html.escape(report['layout'])}</h1>",
             f"<p>{len(report['objects'])} objects; synthesis: {', '.join(report['methods'])}; "
             f"preset {report['preset']}"
             f"{', steps ' + str(report['steps']) if report['steps'] else ''}. Colours: "
             + ", ".join(f"<b style='color:{COLOURS[i % len(COLOURS)]}'>{m}</b>" for i, m in enumerate(models))
             + "</p>",
             *[f"<p><b>{html.escape(name)}</b>: zero-shot diffusion-feature matching with "
               f"{html.escape(note['sd_model'])}"
               + (" &mdash; <b style='color:#c00'>a RANDOM-WEIGHT test model: its numbers mean nothing</b>"
                  if note.get("random_weights") else "") + ".</p>"
               for name, note in report.get("baselines", {}).items()],
             "<h2>Mean over objects and splits</h2>", _bars(summary, models)]
    for split in ["all"] + report["splits"]:
        parts.append(f"<h3>split: {html.escape(split)}</h3><table><tr><th>metric</th>"
                     + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>")
        for key, label in TASKS:
            vals = [summary.get(m, {}).get(split, {}).get(key) for m in models]
            if all(v is None for v in vals):
                continue
            base = vals[0]
            cells = []
            for v in vals:
                cls = "" if v is None or base is None or v == base else ("gain" if v > base else "loss")
                cells.append(f"<td class='{cls}'>{_fmt(v)}</td>")
            parts.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("<h2>Per object (classification AP, all splits): where personalization loses is red</h2>"
                 "<table><tr><th>object</th>"
                 + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>")
    for obj in report["objects"]:
        def mean_ap(m):
            per = report["results"].get(m, {}).get(obj)
            return None if not per else sum(v["classification_ap"] for v in per.values()) / len(per)
        base = mean_ap("pretrained")
        cells = []
        for m in models:
            v = mean_ap(m)
            cls = ""
            if v is not None and base is not None and m != "pretrained":
                cls = "gain" if v > base + 1e-9 else "loss" if v < base - 1e-9 else ""
            cells.append(f"<td class='{cls}'>{_fmt(v)}</td>")
        parts.append(f"<tr><td>{html.escape(obj)}</td>{''.join(cells)}</tr>")
    parts.append("</table><h2>Localisation: best and worst cases (white = truth, coloured = predicted box)</h2>")
    for i, m in enumerate(models):
        cases = sorted(report["examples"].get(m, []), key=lambda e: -e["iou"])
        if not cases:
            continue
        parts.append(f"<h3>{html.escape(m)}</h3><div>")
        for tag, chosen in (("best", cases[:4]), ("worst", cases[-4:])):
            for k, e in enumerate(chosen):
                name = f"{m}_{tag}_{k}.jpg"
                _overlay(e, img / name, COLOURS[i % len(COLOURS)])
                parts.append(f"<figure style='display:inline-block'><img src='img/{name}' width='200' alt='{tag}'>"
                             f"<figcaption>{tag}: {html.escape(e['object'])} ({html.escape(e['split'])}) "
                             f"IoU {e['iou']:.2f}"
                             "</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Time per stage (s)</h2><table>" + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in report["timings"].items()) + "</table>")
    # marks how many images decoded, for a headless-browser check (tests/test_report_renders.py)
    parts.append("<script>window.addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});"
                 "</script></body></html>")
    atomic_write_bytes(out / "index.html", "\n".join(parts).encode())
    atomic_write_json(out / "report.json", {k: v for k, v in report.items() if k != "examples"})
    return out / "index.html"
