#!/usr/bin/env bash
# Build loqi-core and every plugin into one wheelhouse, so that plugins resolve their loqi siblings:
#   bash scripts/build_wheels.sh [DIR]          (default dist/)
#   pip install --find-links dist loqi-plugin-cricavpr
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-dist}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
packages=(.)
for plugin in plugins/loqi-plugin-*/; do
    [ -f "$plugin/pyproject.toml" ] && packages+=("$plugin")
done
"$PY" -m pip wheel -q --no-deps --wheel-dir "$OUT" "${packages[@]}" 2>&1 | grep -v -i "warning\|^  \|^$\|!!\|\*\*\*" || true
echo "$(ls "$OUT"/loqi*.whl | wc -l) wheels in $OUT"
