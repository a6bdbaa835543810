"""Same as `edge-persrep bench`: torch eager vs ORT fp32 and each runtime task, one run.

    python benchmarks/runtime.py [--repeats 30] [--threads 2] [--out runs/bench-runtime.json]
"""

import sys

from edge_persrep.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
