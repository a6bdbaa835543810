"""edge-persrep: personalized representations (Sundaram et al., ICLR 2025) for on-device recognition."""

import os

# OpenMP (torch's libgomp) reads these once, when torch is imported; the environment's own values win.
# Waiting threads spin for 10,000 rounds (about 0.1 ms), then sleep: spinning as long as libgomp's
# default (3 ms) made two `personalize` runs side by side take 3.4x their time alone, never spinning
# made a run alone 15% slower. A thread that spins while another process holds its partner's core
# still wastes it, so training also drops to fewer threads while other processes use the cores
# (runtime/threads.CoreShare). See runtime/threads.py.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # LLVM's libomp (macOS) honours this; libgomp takes the count
    os.environ["GOMP_SPINCOUNT"] = "10000"

__version__ = "0.1.0"
