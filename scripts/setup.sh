#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install loqi-core and every plugin under plugins/, editable.
# Usage: bash scripts/setup.sh            (venv at $LOQI_VENV, default ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOQI_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
editables=(-e ".[test]")
for plugin in plugins/loqi-plugin-*/; do
    [ -f "$plugin/pyproject.toml" ] && editables+=(-e "$plugin[test]")
done
"$PY" -m pip install -q "${editables[@]}"
echo "loqi installed in $VENV ($("$PY" -c 'import loqi_core; print(loqi_core.__version__)'))"
