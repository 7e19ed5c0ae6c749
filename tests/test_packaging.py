"""Packaging: lockstep versions, one package per plugin, wheels that install into a fresh environment."""

import ast
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import loqi_core
from loqi_core.config import tomllib  # the stdlib parser, or tomli on Python 3.10

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").glob("loqi-plugin-*") if (p / "pyproject.toml").exists())


def _project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())["project"]


def test_core_version_matches_package():
    assert _project(ROOT)["version"] == loqi_core.__version__


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_plugin_layout_and_lockstep_version(plugin):
    project = _project(plugin)
    short = plugin.name.removeprefix("loqi-plugin-")
    package = "loqi_plugin_" + short.replace("-", "_")
    assert project["name"] == plugin.name
    assert project["version"] == loqi_core.__version__, "plugins release in lockstep with loqi-core"
    assert any(d.replace(" ", "").startswith("loqi-core>=0.1.0,<0.2") for d in project["dependencies"])
    assert list(project["entry-points"]["loqi"].values())[0].split(":")[0].startswith(package)
    assert (plugin / package / "__init__.py").exists() and (plugin / "README.md").exists()
    assert list((plugin / "tests").glob("test_*.py")), f"{plugin.name} has no tests"


FRONT_DOORS = {"loqi_core", "loqi_core.plugin"}
"""What a plugin's code may import from loqi: the Python API and the front door (docs/architecture.md)."""
TEST_DOORS = FRONT_DOORS | {"loqi_core.testing", "loqi_core.testing.tiny", "loqi_core.cli"}
"""Its tests may also use the conformance kit and the command line."""


def _loqi_imports(files: list[Path]) -> list[str]:
    """``file:line module`` for every import of a loqi_core module, lazy ones included."""
    found = []
    for source in files:
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{source.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "loqi_core"]
    return found


@pytest.mark.parametrize("plugin", [*PLUGINS, ROOT / "plugins" / "_template"], ids=lambda p: p.name)
def test_plugins_import_loqi_only_through_its_front_door(plugin):
    code = [f for f in plugin.rglob("*.py") if "tests" not in f.relative_to(plugin).parts and "build" not in f.parts]
    tests = list((plugin / "tests").rglob("*.py"))
    inside = [i for i in _loqi_imports(code) if i.split()[-1] not in FRONT_DOORS]
    inside += [i for i in _loqi_imports(tests) if i.split()[-1] not in TEST_DOORS]
    assert not inside, "plugins import loqi_core.plugin or the Python API, not internal modules: " + ", ".join(inside)


def test_the_front_door_offers_what_it_lists_without_importing_torch():
    import loqi_core.plugin as front

    assert set(front.__all__) == set(front._EXPORTS) and len(front.__all__) == sum(
        len(names) for group in front._GROUPS.values() for names in group.values()
    ), "a name is listed twice in loqi_core.plugin"
    typed = {}
    tree = ast.parse(Path(front.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                typed.update({a.name: imp.module for a in imp.names})
    assert typed == front._EXPORTS, "the TYPE_CHECKING imports of loqi_core.plugin differ from its _GROUPS"
    for name, module in front._EXPORTS.items():
        assert getattr(front, name) is getattr(__import__(module, fromlist=[name]), name)
    light = subprocess.run([sys.executable, "-c", "import sys, loqi_core.plugin as p; p.hookimpl; p.EncoderSpec; "
                            "p.Degradation; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "[]", "importing the contract from loqi_core.plugin must not import torch or numpy"


# Third-party modules the packages import, and the distribution that provides each.
DISTRIBUTIONS = {
    "torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow", "pydantic": "pydantic",
    "tqdm": "tqdm", "safetensors": "safetensors", "click": "click", "faiss": "faiss-cpu", "av": "av", "timm": "timm",
    "yaml": "pyyaml", "pluggy": "pluggy", "tomli": "tomli", "starlette": "starlette", "uvicorn": "uvicorn",
    "python_multipart": "python-multipart",
}  # fmt: skip


def _imported_distributions(package: Path) -> set[str]:
    """Distributions whose modules a package's own code (not its tests) imports."""
    found = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {DISTRIBUTIONS[m] for m in found if m in DISTRIBUTIONS}


def _requirements(path: Path) -> dict[str, str]:
    from packaging.requirements import Requirement

    return {(r := Requirement(d)).name.lower(): str(r.specifier) for d in _project(path)["dependencies"]}


@pytest.mark.parametrize("package", [ROOT, *PLUGINS], ids=lambda p: p.name)
def test_declares_every_distribution_it_imports(package):
    source = ROOT / "loqi_core" if package == ROOT else next(package.glob("loqi_plugin_*/__init__.py")).parent
    imported, declared = _imported_distributions(source), set(_requirements(package))
    missing = imported - declared
    assert not missing, f"{package.name} imports {sorted(missing)} without declaring them"
    unused = (declared & set(DISTRIBUTIONS.values())) - imported
    assert not unused, f"{package.name} declares {sorted(unused)} but its code never imports them"


def test_one_bound_per_distribution_across_packages():
    seen: dict[str, dict[str, str]] = {}
    for package in [ROOT, *PLUGINS]:
        for name, spec in _requirements(package).items():
            if not name.startswith("loqi-"):
                seen.setdefault(name, {})[package.name] = spec
    disagree = {name: specs for name, specs in seen.items() if len(set(specs.values())) > 1}
    assert not disagree, f"packages declare different bounds: {disagree}"


def _site_without_loqi(tmp: Path) -> Path:
    """A folder of links to this environment's packages minus every loqi distribution: torch etc. without re-install.
    Every package folder on ``sys.path`` counts (site-packages and folders a ``.pth`` adds), the first one winning."""
    farm = tmp / "deps"
    farm.mkdir()
    stdlib = {Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib")}
    site = Path(sysconfig.get_paths()["purelib"]).resolve()  # may lie inside the checkout (.venv) and below platstdlib
    folders = [site] + [Path(p).resolve() for p in sys.path if p and Path(p).is_dir()]
    for folder in dict.fromkeys(folders):
        if folder != site and (folder in stdlib or folder.parent in stdlib or folder == ROOT or ROOT in folder.parents):
            continue
        for entry in folder.iterdir():
            name = entry.name.lower()
            if "loqi" in name or name.endswith(".pth") or name.startswith("__editable__") or (farm / entry.name).exists():
                continue
            (farm / entry.name).symlink_to(entry)
    return farm


def _fresh_venv(tmp: Path) -> tuple[Path, Path]:
    """A virtual environment without loqi whose dependencies come from this one: (its python, its site-packages)."""
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(str(_site_without_loqi(tmp)) + "\n")
    return python, site


def _build_outputs(*trees: Path) -> dict[str, int]:
    """``build/`` and ``*.egg-info`` folders under ``trees`` (not in virtual environments), with their mtimes."""
    found = {}
    for tree in trees:
        for path in tree.rglob("*"):
            if path.is_dir() and (path.name == "build" or path.name.endswith(".egg-info")) and ".venv" not in path.parts:
                found[str(path)] = path.stat().st_mtime_ns
    return found


def copy_template(dest: Path, name: str) -> Path:
    """What a new plugin author does: copy plugins/_template and replace NAME everywhere."""
    target = dest / f"loqi-plugin-{name}"
    for src in (ROOT / "plugins" / "_template").rglob("*"):
        if "__pycache__" in src.parts or src.suffix == ".pyc":
            continue
        out = target / str(src.relative_to(ROOT / "plugins" / "_template")).replace("NAME", name)
        if src.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(src.read_text().replace("NAME", name))
    return target


def build_wheels(out: Path, *packages: Path) -> str:
    """``scripts/build_wheels.sh OUT PACKAGE...`` with this interpreter, offline (no build isolation, no index)."""
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_BUILD_ISOLATION": "0", "PIP_NO_INDEX": "1"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build_wheels.sh"), str(out), *map(str, packages)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_every_package_builds_a_wheel_and_installs_into_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    template = copy_template(tmp_path, "example")
    build_wheels(wheels, *PLUGINS, template)
    built = {w.name.split("-")[0] for w in wheels.glob("*.whl")}
    assert built == {"loqi_core", "loqi_plugin_example"} | {p.name.replace("-", "_") for p in PLUGINS}

    python, site = _fresh_venv(tmp_path)
    env_dir = python.parents[1]
    # install the core and one plugin exactly as `pip install loqi-plugin-<name>` would, from wheels, no index
    plugin = next((p for p in PLUGINS if p.name == "loqi-plugin-jpeg"), PLUGINS[0] if PLUGINS else None)
    chosen = [next(wheels.glob("loqi_core-*.whl")), next(wheels.glob("loqi_plugin_example-*.whl"))]
    if plugin is not None:
        chosen.append(next(wheels.glob(plugin.name.replace("-", "_") + "-*.whl")))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
                    *map(str, chosen)], check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(env_dir / "bin" / "loqi"), "plugins", "--json"], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env={**env, "LOQI_STRICT_PLUGINS": "1"})
    listed = {p["dist"]: p for p in json.loads(out.stdout)}
    assert "loqi-core" in listed and not any(p["error"] for p in listed.values())
    assert listed["loqi-plugin-example"]["registered"] == {"loss": ["example"]}
    if plugin is not None:
        assert plugin.name in listed
    assert len(listed) == 2 + (plugin is not None), "only the installed plugins are visible, not the source tree's"
    tested = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(template / "tests")],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert tested.returncode == 0 and "passed" in tested.stdout, tested.stdout + tested.stderr
    where = subprocess.run([str(python), "-c", "import loqi_core; print(loqi_core.__file__)"], check=True,
                           capture_output=True, text=True, cwd=tmp_path, env=env).stdout
    assert str(site) in where, "loqi_core must come from the wheel, not the source tree"


GUIDE = ROOT / "docs" / "plugin-guide.md"
OUTSIDE = "loqi-plugin-convap"
"""The standalone plugin docs/plugin-guide.md builds, file by file."""


def guide_files(name: str) -> dict[str, str]:
    """The files of the guide's standalone plugin: every fenced block whose first line names ``<name>/<path>``."""
    import re

    files = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M):
        first = block.split("\n", 1)[0].strip()
        found = re.fullmatch(rf"(?:#|<!--) {re.escape(name)}/(\S+?)(?: -->)?", first)
        if found:
            files[found.group(1)] = block
    return files


@pytest.mark.slow
def test_an_outside_plugin_built_from_the_guide_installs_passes_the_kit_and_evaluates(tmp_path):
    """Issue #27: the guide alone, in a fresh folder outside the repository: wheels (scripts/build_wheels.sh, which
    leaves every source tree as it was), a fresh environment, `loqi plugins`, the conformance kit and `loqi eval`."""
    from loqi_core.testing.tiny import write_vpr_folder

    files = guide_files(OUTSIDE)
    assert set(files) == {"pyproject.toml", "README.md", "loqi_plugin_convap/__init__.py", "loqi_plugin_convap/model.py",
                          "tests/test_convap.py"}, sorted(files)  # fmt: skip
    plugin = tmp_path / OUTSIDE
    assert ROOT not in plugin.parents
    for name, text in files.items():
        (plugin / name).parent.mkdir(parents=True, exist_ok=True)
        (plugin / name).write_text(text)
    before = _build_outputs(ROOT, plugin)
    out = build_wheels(tmp_path / "wheels", ROOT / "plugins" / "loqi-plugin-jpeg", plugin)
    assert out.strip().endswith(f"3 wheels in {tmp_path / 'wheels'}")
    assert _build_outputs(ROOT, plugin) == before, "building wheels wrote build/ or *.egg-info into a source tree"

    python, _ = _fresh_venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
                    *map(str, (tmp_path / "wheels").glob("*.whl"))], check=True, capture_output=True, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LOQI_STRICT_PLUGINS="1", LOQI_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               LOQI_CACHE=str(tmp_path / "cache"))  # fmt: skip
    loqi = python.parent / "loqi"

    def run(*args: str, cwd: Path = tmp_path) -> str:
        done = subprocess.run([*args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    listed = {p["name"]: p for p in json.loads(run(str(loqi), "plugins", "--json"))}
    convap = listed["convap"]
    assert convap["dist"] == OUTSIDE and convap["version"] == "0.1.0" and convap["error"] is None
    assert convap["registered"] == {"encoder": ["convap"], "aggregator": ["convap"]} and convap["heavy_imports"] == []
    assert "Deep Residual Learning" in convap["citations"]["encoder"]["convap"]
    assert "GSV-Cities" in convap["citations"]["aggregator"]["convap"]

    kit = run(str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=plugin)
    assert " passed" in kit and "failed" not in kit and "error" not in kit.lower(), kit
    assert "10 passed" in kit, kit  # every MethodTests check ran: none skipped

    data = write_vpr_folder(tmp_path / "data", places=8)
    run(str(loqi), "eval", "--method", "convap", "--weights", "random", "--dataset", f"folder:{data}",
        "--degrade", "jpeg10", "--device", "cpu", "--out", str(tmp_path / "run"), "-s", "eval.num_workers=0")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    (rows,) = [ds["rows"] for ds in metrics["datasets"].values()]
    assert set(rows["pretrained_degraded"]) == {"R@1", "R@2", "R@5", "R@10"}
    assert metrics["run"]["citations"]["aggregator"] == {"convap": convap["citations"]["aggregator"]["convap"]}
    assert "| Random init, jpeg10 |" in (tmp_path / "run" / "results.md").read_text()
