"""The plugin system as a third-party author meets it: entry points, failures, clashes, unknown names."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from loqi_core.errors import DuplicateNameError, PluginLoadError, UnknownNameError
from loqi_core.hooks.manager import Plugins, reset_plugins
from loqi_core.plugin import hookimpl


def make_dist(site: Path, dist: str, module: str, source: str, entry_name: str, version: str = "0.1.0",
              requires: tuple[str, ...] = ()) -> None:
    """Write an importable module plus a dist-info with a ``loqi`` entry point: what pip would install."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    required = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{required}")
    (info / "entry_points.txt").write_text(f"[loqi]\n{entry_name} = {module}\n")


THIRD_PARTY = """
    from loqi_core.plugin import hookimpl
    from loqi_core.hooks.specs import AggregatorSpec, LossSpec, Params

    class CosineParams(Params):
        scale: float = 1.0

    def _loss(params):
        import torch.nn.functional as F
        return lambda b: params.scale * (1 - F.cosine_similarity(b.student_desc, b.teacher_desc)).mean()

    def _maxpool(params, in_channels):
        import torch
        import torch.nn.functional as F

        class MaxPool(torch.nn.Module):
            def forward(self, x):
                return F.normalize(x.amax(dim=(2, 3)), dim=1)

        return MaxPool()

    @hookimpl
    def loqi_register_losses(register):
        register(LossSpec("cosine", _loss, CosineParams, "1 - cosine similarity of descriptors"))

    @hookimpl
    def loqi_register_aggregators(register):
        register(AggregatorSpec("maxpool", _maxpool, description="global max pooling"))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]
    reset_plugins(None)


def fresh(strict: bool = False) -> Plugins:
    plugins = Plugins()
    plugins.load_defaults()
    plugins.load_entry_points(strict=strict)
    reset_plugins(plugins)
    return plugins


def test_third_party_plugin_registers_loss_and_aggregator_and_is_listed(site):
    import torch

    from loqi_core.cli import cli
    from loqi_core.losses.expression import build_loss
    from loqi_core.losses.terms import DistillBatch
    from loqi_core.testing.tiny import tiny_plugin

    make_dist(site, "loqi-plugin-thirdparty", "thirdparty_ok", THIRD_PARTY, "thirdparty")
    plugins = fresh()
    assert plugins.losses.provider("cosine").dist == "loqi-plugin-thirdparty"
    assert "maxpool" in plugins.aggregators
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("thirdparty"))
    assert "loqi-plugin-thirdparty" in line and "loss: cosine" in line and "aggregator: maxpool" in line
    assert "loqi-plugin-thirdparty==0.1.0" in CliRunner().invoke(cli, ["plugins", "--requirements"]).output
    # the third-party loss composes with built-ins, the aggregator mixes with another plugin's encoder
    total, terms = build_loss("mse+2*cosine")(DistillBatch(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1),
                                                           torch.randn(2, 4), torch.randn(2, 4)))
    assert set(terms) == {"mse", "cosine"} and torch.isfinite(total)
    plugins.add(tiny_plugin, name="tiny")
    from loqi_core.models.model import build_model

    model = build_model(encoder="tiny", aggregator="maxpool", weights="random")
    assert model(model.prepare(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)))[1].shape == (2, 16)


def test_code_version_follows_the_source_of_a_plugin_and_of_the_plugins_it_requires(site):
    """The cache key's code versions: an edit at the same version number changes them (issue #27)."""
    loss = """
        from loqi_core.plugin import LossSpec, hookimpl
        SHARED = 1
        @hookimpl
        def loqi_register_losses(register):
            register(LossSpec("{name}", lambda p: None))
    """
    make_dist(site, "loqi-plugin-base", "thirdparty_base", loss.format(name="base-loss"), "base")
    make_dist(site, "loqi-plugin-derived", "thirdparty_derived", loss.format(name="derived-loss"), "derived",
              requires=("loqi-core>=0.1", "Loqi_Plugin.Base>=0.1"))  # any spelling of the name
    make_dist(site, "loqi-plugin-other", "thirdparty_other", loss.format(name="other-loss"), "other")
    plugins = fresh()
    providers = {n: plugins.losses.provider(f"{n}-loss") for n in ("base", "derived", "other")}
    before = {n: plugins.code_version(p) for n, p in providers.items()}
    assert all(v.startswith("0.1.0+src.") for v in before.values()) and len(set(before.values())) == 3
    edited = textwrap.dedent(loss.format(name="base-loss")).replace("SHARED = 1", "SHARED = 2")
    (site / "thirdparty_base.py").write_text(edited)
    after = {n: plugins.code_version(p) for n, p in providers.items()}
    assert after["base"] != before["base"] and after["derived"] != before["derived"]  # derived builds on base
    assert after["other"] == before["other"]


def test_loqi_plugins_flags_a_plugin_whose_import_is_slow_or_heavy(site, monkeypatch):
    """Issue #27: a plugin importing torch at module level made `loqi --help` 10x slower and nothing said so."""
    import loqi_core.hooks.manager as manager
    from loqi_core.cli import cli

    (site / "thirdparty_weighty.py").write_text("import time\ntime.sleep(0.6)\n")  # stands in for torch, not yet imported
    monkeypatch.setattr(manager, "HEAVY_MODULES", (*manager.HEAVY_MODULES, "thirdparty_weighty"))
    source = """
        import thirdparty_weighty
        from loqi_core.plugin import LossSpec, hookimpl
        @hookimpl
        def loqi_register_losses(register):
            register(LossSpec("weighty", lambda p: None))
    """
    make_dist(site, "loqi-plugin-weighty", "thirdparty_heavyplugin", source, "weighty")
    make_dist(site, "loqi-plugin-light", "thirdparty_light", source.replace("import thirdparty_weighty", "")
              .replace('"weighty"', '"light"'), "light")  # fmt: skip
    try:
        fresh()
        text = CliRunner().invoke(cli, ["plugins"]).output
        listed = {p["name"]: p for p in json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)}
    finally:
        sys.modules.pop("thirdparty_weighty", None)
    flagged = text.split("slow to import", 1)[1].split("\n\n", 1)[0]
    assert "import heavy libraries inside the factories" in flagged
    shown = re.search(r"weighty \(dist loqi-plugin-weighty 0\.1\.0\): (\d+\.\d)", flagged)  # a busy machine takes longer
    assert shown and float(shown.group(1)) >= 0.6 and "imports thirdparty_weighty at module level" in flagged
    assert "light (dist" not in flagged
    assert listed["weighty"]["heavy_imports"] == ["thirdparty_weighty"] and listed["weighty"]["import_seconds"] >= 0.6
    assert listed["light"]["heavy_imports"] == [] and listed["light"]["import_seconds"] < 0.5
    assert listed["weighty"]["source"] == "thirdparty_heavyplugin" and listed["weighty"]["citations"] == {}


def test_broken_plugin_is_isolated_then_named_when_needed(site):
    from loqi_core.cli import cli

    make_dist(site, "loqi-plugin-cricavpr2", "thirdparty_broken", "raise ImportError('no module named xformers')", "cricavpr2")
    plugins = fresh()
    assert "mse" in plugins.losses  # everything else still works
    listing = CliRunner().invoke(cli, ["plugins"])
    assert listing.exit_code == 0 and "FAILED: ImportError: no module named xformers" in listing.output
    with pytest.raises(PluginLoadError) as info:
        plugins.method("cricavpr2")
    assert str(info.value) == (
        'Error loading plugin "cricavpr2" (dist loqi-plugin-cricavpr2 0.1.0): ImportError: no module named xformers'
    )
    with pytest.raises(UnknownNameError, match='failed to load: "cricavpr2"'):
        plugins.loss("nothing-like-it")


def test_strict_mode_turns_load_errors_into_failures(site):
    make_dist(site, "loqi-plugin-bad", "thirdparty_bad", "1/0", "bad")
    with pytest.raises(PluginLoadError, match=r'Error loading plugin "bad" \(dist loqi-plugin-bad 0.1.0\): ZeroDivisionError'):
        fresh(strict=True)


def test_clashing_plugins_name_both_distributions(site):
    source = """
        from loqi_core.plugin import hookimpl
        from loqi_core.hooks.specs import LossSpec
        @hookimpl
        def loqi_register_losses(register):
            register(LossSpec("cosine", lambda p: None))
    """
    make_dist(site, "loqi-plugin-one", "thirdparty_one", source, "one")
    make_dist(site, "loqi-plugin-two", "thirdparty_two", source, "two")
    plugins = fresh()
    errors = [p.error for p in plugins.info.values() if p.error]
    assert len(errors) == 1
    assert "loqi-plugin-one" in errors[0] and "loqi-plugin-two" in errors[0] and 'loss "cosine" is registered twice' in errors[0]
    with pytest.raises(PluginLoadError, match="registered twice"):
        fresh(strict=True)


def test_a_clash_with_loqi_core_advises_renaming_not_uninstalling(site):
    """Issue #27: loqi-core cannot be uninstalled, so the advice is to rename the plugin's name."""
    source = """
        from loqi_core.plugin import LossSpec, hookimpl
        @hookimpl
        def loqi_register_losses(register):
            register(LossSpec("mse", lambda p: None))
    """
    make_dist(site, "loqi-plugin-mymse", "thirdparty_mymse", source, "mymse")
    (error,) = [p.error for p in fresh().info.values() if p.error]
    assert 'loss "mse" is registered twice: by plugin "losses" (dist loqi-core' in error
    assert error.endswith("loqi-core's built-in loss keeps the name: rename the one of dist loqi-plugin-mymse.")
    assert "Uninstall" not in error
    make_dist(site, "loqi-plugin-named-losses", "thirdparty_named", source.replace('"mse"', '"other"'), "losses")
    (named,) = [p.error for p in fresh().info.values() if p.error and "entry-point" in p.error]
    assert named.endswith('"losses" is loqi-core\'s own: rename the entry point in dist loqi-plugin-named-losses\'s '
                          "[project.entry-points.loqi].")  # fmt: skip


def test_failed_plugin_leaves_nothing_half_registered():
    from loqi_core.hooks.specs import LossSpec

    class Half:
        @staticmethod
        def loqi_register_losses(register):
            register(LossSpec("half-a", lambda p: None))
            register(LossSpec("mse", lambda p: None))  # clashes with the built-in

    Half.loqi_register_losses = hookimpl(Half.loqi_register_losses)
    plugins = Plugins()
    plugins.load_defaults()
    with pytest.raises(DuplicateNameError):
        plugins.add(Half, name="half")
    assert "half-a" not in plugins.losses and plugins.losses.provider("mse").dist == "loqi-core"


def test_unknown_hook_name_is_an_error(site):
    source = """
        from loqi_core.plugin import hookimpl
        @hookimpl
        def loqi_register_loss(register):
            pass
    """
    make_dist(site, "loqi-plugin-typo", "thirdparty_typo", source, "typo")
    with pytest.raises(PluginLoadError, match='unknown hook "loqi_register_loss"'):
        fresh(strict=True)


def test_unknown_method_suggests_and_lists():
    from loqi_core.testing import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin

    with isolated_plugins(("tiny", tiny_plugin), entry_points=False) as plugins:
        with pytest.raises(UnknownNameError) as info:
            plugins.method("tinny")
    message = str(info.value)
    assert message.startswith('Unknown method "tinny". Did you mean "tiny"? Installed methods: tiny.')
    assert "pip install loqi-plugin-<name>" in message


def test_loqi_plugins_does_not_import_torch():
    code = (
        "import sys; from click.testing import CliRunner; from loqi_core.cli import cli; "
        "from loqi_core.hooks.manager import get_plugins; get_plugins().add_commands(cli); "
        "r = CliRunner().invoke(cli, ['plugins']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'torchvision', 'timm', 'faiss', 'av') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
