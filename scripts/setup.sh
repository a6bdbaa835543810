#!/usr/bin/env bash
# Create .venv (if missing) and install edge-persrep with every extra from this checkout.
# torch/torchvision resolve to a matching pair within pyproject's ranges (2.14.1 / 0.29.1 here).
#   --web   also the browser app's test needs: examples/web's npm packages (pinned in its
#           package-lock.json) and, as root with apt-get, Debian's chromium. Best effort: what cannot
#           be installed is reported, and tests/test_web.py then skips saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[all]'

if [ "${1:-}" = "--web" ]; then
  if command -v npm >/dev/null; then
    # --ignore-scripts: no package here needs an install script (onnxruntime-web ships its wasm files)
    (cd examples/web && npm ci --ignore-scripts --no-audit --no-fund --silent) \
      || echo "setup: npm ci in examples/web failed; the browser test will be skipped" >&2
  else
    echo "setup: no npm; the browser test will be skipped" >&2
  fi
  if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "setup: apt-get install chromium failed; the browser test will be skipped" >&2
    else
      echo "setup: no Chromium and no root apt-get to install it; the browser test will be skipped" >&2
    fi
  fi
fi
