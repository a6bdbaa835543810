#!/usr/bin/env bash
# Create .venv (if missing) and install edge-persrep with every extra from this checkout.
# torch/torchvision resolve to a matching pair within pyproject's ranges (2.14.1 / 0.29.1 here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[all]'
