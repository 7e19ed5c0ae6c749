#!/usr/bin/env bash
# Build loqi-core and plugins into one wheelhouse, so that plugins resolve their loqi siblings:
#   bash scripts/build_wheels.sh [DIR [PLUGIN_DIR...]]
#     DIR          the wheelhouse (default: dist/ of this repository)
#     PLUGIN_DIR   plugin source folders to build beside loqi-core, in this repository or outside it
#                  (default: every plugin of this repository)
#   pip install --find-links dist loqi-plugin-cricavpr
# Relative paths are taken from the current folder. Each package is built from a copy in a temporary folder, so no
# source tree gets build/ or *.egg-info. PYTHON picks the interpreter; PIP_NO_BUILD_ISOLATION=0 builds with the
# interpreter's own setuptools (no download).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/dist}"
[ $# -gt 0 ] && shift
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
if [ $# -gt 0 ]; then
    sources=("$@")
else
    sources=()
    for plugin in "$ROOT"/plugins/loqi-plugin-*/; do
        [ -f "$plugin/pyproject.toml" ] && sources+=("$plugin")
    done
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# loqi-core: its pyproject, README and package only (not plugins/, tests/ or a virtual environment)
mkdir "$WORK/loqi-core"
cp -R "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/loqi_core" "$WORK/loqi-core/"
copies=("$WORK/loqi-core")
for src in "${sources[@]}"; do
    [ -f "$src/pyproject.toml" ] || { echo "error: $src has no pyproject.toml (not a plugin source folder)" >&2; exit 2; }
    dest="$WORK/$(basename "$(cd "$src" && pwd)")"
    mkdir "$dest"
    tar -C "$src" --exclude=.git --exclude=.venv --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ -cf - . | tar -C "$dest" -xf -
    copies+=("$dest")
done
"$PY" -m pip wheel -q --no-deps --wheel-dir "$OUT" "${copies[@]}" 2>&1 | grep -v -i "warning\|^  \|^$\|!!\|\*\*\*" || true
built=0
for copy in "${copies[@]}"; do
    name="$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$copy/pyproject.toml" | head -1 | tr '-' '_')"
    ls "$OUT/$name"-*.whl >/dev/null 2>&1 || { echo "error: no wheel of $name in $OUT" >&2; exit 1; }
    built=$((built + 1))
done
echo "$built wheels in $OUT"
