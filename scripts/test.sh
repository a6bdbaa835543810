#!/usr/bin/env bash
# Install everything from this checkout (with the browser app's test needs, best effort) and run the
# default (fast) test suite.
# Slow and GPU tests: .venv/bin/python -m pytest -m slow   /   -m gpu
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --web
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -rs "$@"
