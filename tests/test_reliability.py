"""Nothing is lost (SIGKILL mid-write, two writers at once) and nothing leaves the machine."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_persrep.runtime import Finder, PrototypeStore

WRITER = """
import sys, numpy as np
from edge_persrep.runtime import PrototypeStore, Prototype
path, sha = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
while True:
    store = PrototypeStore.load(path, sha)
    n = len(store.objects)
    store.add(Prototype(f"obj{n}", "thing", rng.random((4, 1280), np.float32), rng.random((4, 1280), np.float32),
                        rng.random((4, 1280), np.float32), 0.5, [bytes(200_000)]))
    store.save(path)
    print(n + 1, flush=True)
"""


def test_sigkill_during_store_writes_never_breaks_the_store(bundle_copy):
    """A process rewrites a ~7 MB store in a loop; it is SIGKILLed at 12 random moments. After each
    kill the store must load, and hold either the last count the writer reported or one more."""
    path = bundle_copy / "prototypes.safetensors"
    sha = Finder.open(bundle_copy).bundle.model_sha256
    PrototypeStore(sha, 1280, 1280).save(path)
    rng = random.Random(0)
    for _ in range(12):
        before = len(PrototypeStore.load(path, sha).objects)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), sha], stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.8, 2.5))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        reported = int(out.split()[-1]) if out.split() else before
        after = len(PrototypeStore.load(path, sha).objects)  # raises if the file is broken
        assert after in (reported, reported + 1)
    assert after > 0


def test_sigkilled_enroll_leaves_old_or_new_store(bundle_copy, examples):
    rng = random.Random(1)
    sha = Finder.open(bundle_copy).bundle.model_sha256
    for attempt in range(4):
        before = set(PrototypeStore.load(bundle_copy / "prototypes.safetensors", sha).objects) \
            if (bundle_copy / "prototypes.safetensors").exists() else set()
        proc = subprocess.Popen([sys.executable, "-m", "edge_persrep.cli", "enroll", str(bundle_copy),
                                 str(examples / "dog"), "--name", f"dog{attempt}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (bundle_copy / "prototypes.safetensors").exists():
            after = set(PrototypeStore.load(bundle_copy / "prototypes.safetensors", sha).objects)
            assert after in (before, before | {f"dog{attempt}"})


def test_two_processes_enrolling_at_once_lose_nothing(bundle_copy, examples):
    procs = [subprocess.Popen([sys.executable, "-c", (
        "from edge_persrep.cli import main\n"
        f"for i in range(2): assert main(['enroll', {str(bundle_copy)!r}, {str(examples / 'dog')!r}, "
        f"'--name', '{who}' + str(i)]) == 0")]) for who in ("a", "b")]
    assert [p.wait() for p in procs] == [0, 0]
    names = set(Finder.open(bundle_copy).store.objects)
    assert names == {"a0", "a1", "b0", "b1"}


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare -n` (root or user namespaces)")
def test_whole_path_runs_with_the_network_cut_and_writes_nothing_outside(tmp_path, examples):
    pytest.importorskip("torch")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    env.pop("HF_HUB_OFFLINE", None)  # the package itself must not need the network, offline flag or not
    run = tmp_path / "run"
    cli = ["unshare", "-n", sys.executable, "-m", "edge_persrep.cli"]
    steps = [
        ["personalize", examples / "dog", "--name", "dog", "--category", "dog", "--out", run,
         "--negatives", examples / "negatives", "--steps", "2"],
        ["export", run, "--out", tmp_path / "again"],  # loads the backbone from the run's record, not the request
        ["find", tmp_path / "again", examples / "dog_heldout", "--json"],
    ]
    for args in steps:
        out = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.splitlines()) == 2 and all(json.loads(line)["results"][0]["present"]
                                                     for line in out.stdout.splitlines())
    leaked = [str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file()]
    assert leaked == [], f"files written outside the run directory: {leaked}"
