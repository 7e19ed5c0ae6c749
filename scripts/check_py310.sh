#!/usr/bin/env bash
# Python 3.10 check (Ubuntu 22.04 / ROS 2 Humble): every loqi module compiles, every module whose imports are light
# (no torch, torchvision, timm, faiss, av; pytest for the testing kit) imports, and `loqi --help` and `loqi plugins` work, with only the light
# dependencies installed. Usage: bash scripts/check_py310.sh   (venv at $LOQI_PY310_VENV, default ./.venv-py310)
set -euo pipefail
cd "$(dirname "$0")/.."
find_py310() {
    local candidate
    for candidate in "${LOQI_PY310:-}" "$(pyenv root 2>/dev/null || true)"/versions/3.10*/bin/python3.10 python3.10; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}
PY310="$(find_py310)"
if [ -z "$PY310" ]; then
    if [ -n "${CI:-}" ]; then echo "check_py310: no Python 3.10 found (set LOQI_PY310)" >&2; exit 1; fi
    echo "check_py310: skipped, no Python 3.10 on this machine (set LOQI_PY310=/path/to/python3.10)"
    exit 0
fi
VENV="${LOQI_PY310_VENV:-.venv-py310}"
[ -x "$VENV/bin/python" ] || "$PY310" -m venv "$VENV"
PY="$VENV/bin/python"
packages=(.)
for plugin in plugins/loqi-plugin-*/; do [ -f "$plugin/pyproject.toml" ] && packages+=("$plugin"); done
{
    "$PY" -m pip install -q "pluggy>=1.3" "pydantic>=2.5" "click>=8.1" "numpy>=1.25" "pillow>=10" "pyyaml>=6" \
        "tqdm>=4.60" "safetensors>=0.4" "tomli>=1.1" "setuptools>=77"
    "$PY" -m pip install -q --no-deps --no-build-isolation "${packages[@]}"
} >"$VENV/setup.log" 2>&1 || { cat "$VENV/setup.log" >&2; exit 1; }
"$PY" -m compileall -q loqi_core plugins/loqi-plugin-*/loqi_plugin_* >/dev/null
"$PY" - <<'PY'
import importlib, pkgutil, sys
import loqi_core
heavy = {"torch", "torchvision", "timm", "faiss", "av", "pytest"}  # pytest: the testing kit (the [test] extra)
names = [m.name for m in pkgutil.walk_packages(loqi_core.__path__, "loqi_core.")]
names += [d.name for d in pkgutil.iter_modules() if d.name.startswith("loqi_plugin_")]
imported, needs_heavy, failed = 0, 0, []
for name in sorted(names):
    try:
        importlib.import_module(name)
        imported += 1
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in heavy:
            needs_heavy += 1
        else:
            failed.append(f"{name}: {exc!r}")
    except Exception as exc:  # noqa: BLE001 - any other import failure is what this check is for
        failed.append(f"{name}: {exc!r}")
print(f"Python {sys.version.split()[0]}: {imported} loqi modules import, {needs_heavy} need torch & co (compiled only)")
if failed:
    sys.exit("modules that fail to import on Python 3.10:\n  " + "\n  ".join(failed))
PY
"$VENV/bin/loqi" --help >/dev/null
"$VENV/bin/loqi" plugins >/dev/null
echo "check_py310: loqi --help and loqi plugins work on $("$PY" --version)"
