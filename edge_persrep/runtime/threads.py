"""How many compute threads edge-persrep uses, process-wide: torch (training, export), OpenMP and
ONNX Runtime sessions.

Two processes each running as many busy threads as there are cores fight for them: torch's
OpenMP threads spin while they wait for each other, and a thread that has lost its core holds up
its team. Two `personalize` runs (60 training steps) started together on 2 cores took 3.4x as long
as one alone with libgomp's default policy (spin 3 ms, then sleep), 1.3x with threads that never
spin, which cost 15% alone (benchmarks/contention.py). So:
- OpenMP threads spin briefly, then sleep (GOMP_SPINCOUNT=10000 with OMP_WAIT_POLICY=PASSIVE, set
  in edge_persrep/__init__.py unless the environment sets either; OpenMP reads them once, so they
  take effect only if torch is imported after edge_persrep). Alone this is as fast as libgomp's
  default; next to another CPU-bound process it is as slow as the default (3.2-3.6x at 120 steps),
  hence:
- Training shares the cores (`CoreShare`): about once a second it measures how much CPU other
  processes took and runs torch on the cores they leave (at least one). One thread has no
  partner to wait for, so a contended run never spins. `--threads N` pins the count instead.
- ONNX Runtime sessions never spin (bundle.SESSION_CONFIG).
- A frame's scoring (Finder.classify / locate) runs its matrix products on one BLAS thread
  (`one_blas_thread`): numpy's OpenBLAS otherwise wakes a second thread for products this small,
  which then spins and takes a core from the next model run (README, "Latency").
- `set_threads(n)` (the CLI's --threads) caps all of them, e.g. to leave cores to other work.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

_threads: int | None = None


def set_threads(n: int | None) -> None:
    """Use `n` compute threads from now on (None or 0: each library's default, one per core).
    torch gets it now if it is imported, else at import (OMP_NUM_THREADS); ONNX Runtime sessions
    made after this call get it as their intra-op thread count."""
    global _threads
    if n is not None and n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    _threads = n or None
    if _threads is None:
        return
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch = sys.modules.get("torch")  # never imported from here: the runtime stays torch-free
    if torch is not None:
        torch.set_num_threads(_threads)


def threads() -> int | None:
    """The thread count set by set_threads, or None for the libraries' defaults."""
    return _threads


def threads_or_cores() -> int:
    """The thread count set by set_threads, else one per core this process may run on."""
    return _threads or len(_usable_cpus())


def settings() -> dict:
    """What a run records about its threads (for run.json and benchmarks)."""
    torch = sys.modules.get("torch")
    return {"threads": _threads or "default", "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            **({"torch_threads": torch.get_num_threads()} if torch is not None else {})}


_blas = None  # threadpoolctl's view of the BLAS libraries loaded (numpy's), found on first use


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Numpy's BLAS on one thread inside the block (about 4 us to enter and leave), as it was after."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    with _blas.limit(limits=1):
        yield


def threads_to_use(cores: int, others_busy: float, most: int) -> int:
    """Threads for the cores other processes leave: `cores` we may run on, `others_busy` cores'
    worth of CPU the rest of the machine used lately, at most `most`, at least 1. On 2 cores: 2
    while others use under half a core, else 1."""
    return max(1, min(most, round(cores - others_busy)))


def busy_cpu_seconds(stat: str, cpus: set[int], ticks_per_second: int) -> float:
    """CPU seconds the given CPUs have spent busy (not idle or waiting on IO), from /proc/stat's text."""
    busy = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / ticks_per_second


class CoreShare:
    """Torch's threads follow the cores other processes leave free, checked at most once a
    `period_s` from the thread that runs torch (`check()` in a training loop: an omp_set_num_threads
    made elsewhere would not reach its threads). Others' use = the usable CPUs' busy time
    (/proc/stat) minus this process's CPU time. Off where threads are pinned (set_threads), where
    /proc/stat cannot be read (not Linux) or with one thread to begin with. On leaving, the count
    is restored. `seconds` records how long each thread count ran (a run's record). `sample`
    (tests) replaces the clock: () -> (wall s, the CPUs' busy s or None, this process's CPU s)."""

    def __init__(self, period_s: float = 1.0, sample=None, cpus: set[int] | None = None):
        self.period_s, self.seconds = period_s, {}
        self._cpus = cpus if cpus is not None else _usable_cpus()
        self._sample = sample or self._measure
        self._torch = sys.modules.get("torch")
        self.most = self._torch.get_num_threads() if self._torch is not None else 1
        self.current = self.most
        self._mark = self._sample()
        self.enabled = _threads is None and self.most > 1 and self._mark[1] is not None

    def _measure(self) -> tuple[float, float | None, float]:
        try:
            with open("/proc/stat") as f:
                busy = busy_cpu_seconds(f.read(), self._cpus, os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError):
            busy = None
        return time.monotonic(), busy, time.process_time()

    def __enter__(self) -> "CoreShare":
        self._mark = self._sample()
        return self

    def _count(self, now: float) -> None:
        """The time since the last mark, to the current thread count."""
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self._mark[0]

    def check(self) -> None:
        if not self.enabled:
            return
        then, busy_then, mine_then = self._mark
        now, busy, mine = sample = self._sample()
        if now - then < self.period_s:
            return
        others = max(0.0, (busy - busy_then) - (mine - mine_then)) / (now - then)
        self._count(now)
        self._mark = sample
        want = threads_to_use(len(self._cpus), others, self.most)
        if want != self.current:
            self._torch.set_num_threads(want)
            self.current = want

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._count(self._sample()[0])
            if self.current != self.most:
                self._torch.set_num_threads(self.most)
                self.current = self.most

    def record(self) -> dict:
        """{"adaptive": bool, "seconds_at": {threads: seconds}} for a run's summary."""
        return {"adaptive": self.enabled, "seconds_at": {str(k): round(v, 1) for k, v in sorted(self.seconds.items())}}


def _usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))
