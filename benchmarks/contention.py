"""How much slower is `personalize` when something else keeps the CPU busy? (issue "Personalize on a
laptop CPU in about a minute, and never 10x slower because something else is running")

    python benchmarks/contention.py [--steps 0] [--repeats 3] [--policies edge-persrep,PASSIVE,default]

Runs the example dog's `personalize` (examples/images, `--steps` training steps, 0 for the preset's
own, a new run directory each time) in three conditions, each `--repeats` times:
    alone       nothing else running
    busy loop   next to one plain CPU-bound Python process (`while True: pass`)
    pair        two `personalize` runs started together (both timed)
once per OpenMP wait setting in `--policies`: `edge-persrep` is what the package sets
(runtime/threads.py: spin 10,000 rounds, then sleep), PASSIVE never spins (the package's setting
before 2026-11-30), `default` leaves OMP_WAIT_POLICY empty (libgomp's own: spin 3 ms, then sleep).
In all three, training gives up threads while another process uses the cores (CoreShare). Prints
median wall seconds and the ratio to `alone` in the same policy, and writes JSON. Run it on an
otherwise idle machine: anything else running is a third competitor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
BUSY_LOOP = [sys.executable, "-c", "while True: pass"]
CONDITIONS = ("alone", "busy loop", "pair")


def personalize_command(out: Path, steps: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "edge_persrep.cli", "personalize", str(EXAMPLES / "dog"), "--name", "dog",
            "--category", "dog", "--negatives", str(EXAMPLES / "negatives"), "--out", str(out),
            *(["--steps", str(steps)] if steps else []), "--threads", str(threads)]


def environment(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["HF_HUB_OFFLINE"] = "1"
    if policy != "edge-persrep":
        env["OMP_WAIT_POLICY"] = "" if policy == "default" else policy  # set, so edge-persrep keeps it
    return env


def timed_runs(commands: list[list[str]], env: dict, logs: Path) -> list[float]:
    """Start the commands together; wall seconds of each (a failure stops the benchmark)."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=(logs / f"{i}.log").open("w"))
             for i, c in enumerate(commands)]
    seconds: dict[int, float] = {}
    while len(seconds) < len(procs):
        for i, proc in enumerate(procs):
            if i not in seconds and proc.poll() is not None:
                seconds[i] = time.perf_counter() - started
                if proc.returncode != 0:
                    raise SystemExit(f"personalize failed ({proc.returncode}):\n"
                                     f"{(logs / f'{i}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return [seconds[i] for i in range(len(procs))]


def measure(policy: str, condition: str, steps: int, threads: int, work: Path, run: int) -> list[float]:
    env = environment(policy)
    out = work / f"{policy}-{condition.replace(' ', '-')}-{run}"
    if condition == "pair":
        return timed_runs([personalize_command(out / "a", steps, threads),
                           personalize_command(out / "b", steps, threads)], env, out / "logs")
    busy = subprocess.Popen(BUSY_LOOP) if condition == "busy loop" else None
    try:
        return timed_runs([personalize_command(out / "run", steps, threads)], env, out / "logs")
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=0, help="training steps per personalize (0: the preset's)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per condition; medians are reported")
    ap.add_argument("--policies", default="edge-persrep", help="OpenMP wait settings to compare: "
                    "edge-persrep, PASSIVE, default, or any OMP_WAIT_POLICY value")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="which of: " + ", ".join(CONDITIONS))
    ap.add_argument("--threads", type=int, default=0, help="personalize --threads (0: one per core)")
    ap.add_argument("--out", type=Path, default=Path("runs/contention.json"))
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies.split(","):
            alone = None
            for condition in args.conditions.split(","):
                seconds = [s for run in range(args.repeats)
                           for s in measure(policy, condition, args.steps, args.threads, Path(tmp), run)]
                median = statistics.median(seconds)
                alone = median if condition == "alone" else alone
                ratio = median / alone if alone else float("nan")  # no `alone` condition asked for
                rows.append({"policy": policy, "condition": condition, "seconds": [round(s, 1) for s in seconds],
                             "median_s": round(median, 1), "ratio_to_alone": round(ratio, 2)})
                print(f"{policy:12s} {condition:10s} median {median:6.1f} s  x{ratio:.2f}  "
                      f"(runs: {', '.join(f'{s:.0f}' for s in seconds)})", flush=True)
    print("\n| OpenMP wait | condition | median s | x alone | runs (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['condition']} | {r['median_s']:.1f} | {r['ratio_to_alone']:.2f} | "
              f"{', '.join(f'{s:.0f}' for s in r['seconds'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps or "preset", "repeats": args.repeats,
                                    "threads": args.threads or "default",
                                    "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
