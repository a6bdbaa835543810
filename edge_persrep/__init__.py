"""edge-persrep: personalized representations (Sundaram et al., ICLR 2025) for on-device recognition."""

import os

# OpenMP threads (torch's) sleep while they wait instead of spinning, unless the environment says
# otherwise: two `personalize` runs side by side took 3.4x their time alone with spinning, 1.3x
# sleeping (10-20% slower alone). OpenMP reads this once, when torch is imported. See runtime/threads.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
