"""The browser app (examples/web) in a real headless Chromium answers as the Python runtime does.

It needs Node.js, Debian's Chromium and the app's npm packages (`bash scripts/setup.sh --web`
installs both; scripts/test.sh asks for them) and is skipped, saying which is missing, without them.
"""

import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_persrep.runtime import Finder, list_images
from edge_persrep.runtime.metrics import box_iou

WEB = Path(__file__).resolve().parents[1] / "examples" / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (bash scripts/setup.sh --web installs Debian's)"
    if not all((WEB / "node_modules" / package).is_dir() for package in ("onnxruntime-web", "playwright-core")):
        return "examples/web has no node_modules (bash scripts/setup.sh --web)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


class _Quiet(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def test_browser_app_gives_the_python_runtimes_scores_decisions_and_boxes(pretrained_bundle, examples, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "web").symlink_to(WEB)
    bundle = shutil.copytree(pretrained_bundle, site / "bundle")
    finder = Finder.open(bundle)
    finder.enroll("my_dog", list_images([examples / "dog"]), "dog", negatives=list_images([examples / "negatives"]))
    photos = list_images([examples / "dog_heldout", examples / "heldout_others"])
    (site / "photos").mkdir()
    for p in photos:
        shutil.copy(p, site / "photos" / p.name)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        url = f"{base}/web/index.html?bundle=/bundle/&photos=" + ",".join(f"/photos/{p.name}" for p in photos)
        out = subprocess.run(["node", str(WEB / "test" / "run.mjs"), url, str(tmp_path / "page.png")],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "CHROMIUM": CHROMIUM})
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    answers = report["results"]
    assert isinstance(answers, list), (answers, report["console"])

    decisions = set()
    for photo, answer in zip(photos, answers):
        (features,) = finder.embed([photo])
        (expected,) = finder.find(features, task="all")
        (got,) = answer["results"]
        assert (answer["width"], answer["height"]) == (features.width, features.height)
        assert got["name"] == expected.name and got["present"] == expected.present, photo.name
        assert abs(got["score"] - expected.score) < 1e-3, (photo.name, got["score"], expected.score)
        assert abs(got["global_score"] - expected.global_score) < 1e-3 and abs(got["region_score"]
                                                                              - expected.region_score) < 1e-3
        if expected.present:
            assert box_iou(tuple(got["box"]), expected.box) > 0.9, (photo.name, got["box"], expected.box)
            assert abs(got["mask_pixels"] - int(expected.mask.sum())) <= 0.05 * expected.mask.sum()
        decisions.add(expected.present)
    assert decisions == {True, False}  # the example photos have both answers
