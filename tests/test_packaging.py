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
    "yaml": "pyyaml", "pluggy": "pluggy", "tomli": "tomli",
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
    """A folder of links to this environment's packages minus every loqi distribution: torch etc. without re-install."""
    farm = tmp / "deps"
    farm.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if "loqi" in name or name.endswith(".pth") or name.startswith("__editable__"):
            continue
        (farm / entry.name).symlink_to(entry)
    return farm


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


@pytest.mark.slow
def test_every_package_builds_a_wheel_and_installs_into_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    template = copy_template(tmp_path, "example")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT),
         str(template), *map(str, PLUGINS)],
        check=True, capture_output=True, text=True,
    )
    built = {w.name.split("-")[0] for w in wheels.glob("*.whl")}
    assert built == {"loqi_core", "loqi_plugin_example"} | {p.name.replace("-", "_") for p in PLUGINS}

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(str(_site_without_loqi(tmp_path)) + "\n")
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
