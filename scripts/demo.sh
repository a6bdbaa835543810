#!/usr/bin/env bash
# The main job on the embedded default, offline, CPU: personalize the example dog from 3 photos
# (real EfficientNet-Lite0 weights), export it, and find it in held-out photos with overlays.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
RUN=${RUN:-runs/example}
.venv/bin/edge-persrep personalize examples/images/dog --name my_dog --category dog \
    --negatives examples/images/negatives --out "$RUN"
.venv/bin/edge-persrep info "$RUN/bundle"
.venv/bin/edge-persrep find "$RUN/bundle" examples/images/dog_heldout examples/images/heldout_others \
    --overlays "$RUN/overlays"
echo "overlays (box + mask) in $RUN/overlays"
