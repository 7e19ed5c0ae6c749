#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install loqi-core and every plugin under plugins/, editable.
# Usage: bash scripts/setup.sh            (venv at $LOQI_VENV, default ./.venv)
# Installs only when a pyproject.toml changed since the last successful setup (a stamp in the venv records them);
# LOQI_REINSTALL=1 forces it. pip's output goes to $VENV/setup.log and is shown only when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LOQI_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
editables=(-e ".[test]")
for plugin in plugins/loqi-plugin-*/; do
    [ -f "$plugin/pyproject.toml" ] && editables+=(-e "$plugin[test]")
done
stamp="$VENV/.loqi-setup-stamp"
wanted="$(cat pyproject.toml plugins/loqi-plugin-*/pyproject.toml | sha256sum | cut -d' ' -f1) $(pwd)"
if [ "${LOQI_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
    && "$PY" -c "import loqi_core" 2>/dev/null; then
    echo "loqi is up to date in $VENV ($("$PY" -c 'import loqi_core; print(loqi_core.__version__)'))"
    exit 0
fi
rm -f "$stamp"
if ! { "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q "${editables[@]}"; } >"$VENV/setup.log" 2>&1; then
    cat "$VENV/setup.log" >&2
    echo "setup failed: pip's full output is in $VENV/setup.log" >&2
    exit 1
fi
echo "$wanted" >"$stamp"
echo "loqi installed in $VENV ($("$PY" -c 'import loqi_core; print(loqi_core.__version__)'))"
