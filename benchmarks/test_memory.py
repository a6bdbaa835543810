"""Peak memory of the test suite, and which tests reach it (issue "A new user's first hour", item 10).

    python benchmarks/test_memory.py [--out runs/test_memory.json] [-- PYTEST ARGS]

Runs pytest in this process with a sampler thread: every 0.25 s it reads the resident memory of
this process and of every process it started (the CLI tests' subprocesses), and charges the
sample to the test that is running. Prints the overall peaks and the ten most memory-hungry tests,
and writes them as JSON. Takes as long as the test run it measures (about 10 minutes by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

GB = 2**30


class MemorySampler:
    """A pytest plugin: the running test's id, and RSS samples (own, whole process tree) per test."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.current, self.peaks = interval, "(collection)", {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        own = me.memory_info().rss
        children = 0
        for child in me.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:  # it ended between listing and reading
                pass
        return own, own + children

    def _run(self) -> None:
        while not self.stop.is_set():
            own, tree = self._sample()
            old = self.peaks.get(self.current, (0, 0))
            self.peaks[self.current] = (max(old[0], own), max(old[1], tree))
            time.sleep(self.interval)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/test_memory.json"))
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (after --), e.g. -m slow")
    args = ap.parse_args(argv)

    sampler = MemorySampler()
    sampler.thread.start()
    started = time.time()
    code = pytest.main(["-q", *args.pytest_args], plugins=[sampler])
    sampler.stop.set()
    sampler.thread.join()
    seconds = time.time() - started

    ranked = sorted(sampler.peaks.items(), key=lambda kv: -kv[1][1])
    own_peak = max(own for own, _ in sampler.peaks.values())
    tree_peak = max(tree for _, tree in sampler.peaks.values())
    print(f"\npytest exit code {int(code)}, {seconds:.0f} s; peak RSS: pytest process {own_peak / GB:.2f} GB, "
          f"with its subprocesses {tree_peak / GB:.2f} GB")
    print("| test | peak GB, pytest process | peak GB, with subprocesses |")
    print("|---|---|---|")
    for nodeid, (own, tree) in ranked[:10]:
        print(f"| {nodeid} | {own / GB:.2f} | {tree / GB:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "pytest_args": args.pytest_args, "exit_code": int(code), "seconds": round(seconds, 1),
        "peak_gb": {"pytest_process": round(own_peak / GB, 3), "with_subprocesses": round(tree_peak / GB, 3)},
        "per_test_gb": {k: {"pytest_process": round(o / GB, 3), "with_subprocesses": round(t / GB, 3)}
                        for k, (o, t) in ranked}}, indent=2))
    print(f"wrote {args.out}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
