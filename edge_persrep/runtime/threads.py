"""How many compute threads edge-persrep uses, process-wide: torch (training, export), OpenMP and
ONNX Runtime sessions.

Two processes each running as many busy threads as there are cores fight for them: torch's
OpenMP threads spin while they wait for each other, and a thread that has lost its core holds up
its team. Two `personalize` runs (60 training steps) started together on 2 cores took 3.4x as long
as one alone with libgomp's default policy, 1.3x with threads that sleep (benchmarks/contention.py).
So:
- OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE, set in edge_persrep/__init__.py,
  unless the environment sets it; OpenMP reads it once, so it takes effect only if torch is
  imported after edge_persrep). Alone it costs 10-20% (waking threads between small parallel
  regions); `OMP_WAIT_POLICY=` (empty) in the environment keeps libgomp's default.
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


def settings() -> dict:
    """What a run records about its threads (for run.json and benchmarks)."""
    torch = sys.modules.get("torch")
    return {"threads": _threads or "default", "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
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
