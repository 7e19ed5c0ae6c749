#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite, core and every plugin.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${LOQI_VENV:-.venv}"
export LOQI_STRICT_PLUGINS=1 HF_HUB_OFFLINE=1 LOQI_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one thread per xdist worker: oversubscribed cores run 10x slower
exec "$VENV/bin/python" -m pytest -n "${LOQI_TEST_WORKERS:-2}" "$@"
