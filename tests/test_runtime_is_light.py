"""The runtime ships inside apps: it must never import torch or the other server-side packages."""

import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "timm", "diffusers", "peft", "transformers", "torchvision")


def test_runtime_package_imports_no_heavy_module():
    code = ("import sys, edge_persrep.runtime as r; import edge_persrep.runtime.dense, edge_persrep.runtime.finder; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_find_and_enroll_through_cli_import_no_torch(pretrained_bundle, examples, tmp_path):
    """Enrol and find end to end (the CLI's runtime commands) with torch poisoned in sys.modules."""
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(pretrained_bundle, bundle)
    code = f"""
import sys
class Poison:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('runtime imported ' + name)
sys.meta_path.insert(0, Poison())
from edge_persrep.cli import main
assert main(['enroll', {str(bundle)!r}, {str(examples / 'dog')!r}, '--name', 'dog']) == 0
assert main(['find', {str(bundle)!r}, {str(examples / 'dog_heldout')!r}, '--json']) == 0
assert main(['info', {str(bundle)!r}]) == 0
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_runtime_sources_have_no_heavy_imports():
    root = Path(__file__).resolve().parents[1] / "edge_persrep" / "runtime"
    for path in root.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert not any(f" {m}" in stripped.split(" as ")[0] for m in HEAVY), f"{path.name}: {stripped}"


def test_runtime_writes_nothing_to_home(pretrained_bundle, examples, tmp_path):
    """An app using the runtime directly (no CLI) leaves no telemetry or cache files behind."""
    import os

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    code = (f"from edge_persrep.runtime import Finder; f = Finder.open({str(pretrained_bundle)!r}); "
            f"f.embed([{str(examples / 'dog' / '00.jpg')!r}])")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    assert [p for p in home.rglob("*") if p.is_file()] == []
