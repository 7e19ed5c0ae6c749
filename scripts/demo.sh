#!/usr/bin/env bash
# Set up the environment and run the main job on the bundled demo data, offline:
# distil the EfficientNet-Lite0 method against JPEG-10 and write a Table II-style report under runs/demo,
# then the paired sign tests of the student against the teacher over the same degraded queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${LOQI_VENV:-.venv}"
"$VENV/bin/loqi" run --method lite0-gem --degrade jpeg10 --out runs/demo "$@"
if [ "$#" -eq 0 ]; then
  "$VENV/bin/python" benchmarks/distill_gain.py --paired runs/demo
fi
