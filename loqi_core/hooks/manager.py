"""The plugin manager: loads every ``loqi`` entry point, isolates failures, fills the registries.

A plugin that fails to import is recorded with its error and skipped; only a command that needs
one of its names fails (``LOQI_STRICT_PLUGINS=1`` makes every load error fatal, as CI does).
Built-in plugins (the losses, the folder dataset) register through the very same hooks.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import re
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from loqi_core.errors import ConfigError, LoqiError, PluginLoadError, UnknownNameError
from loqi_core.hooks import hookspecs
from loqi_core.hooks.registry import Provider, Registry, unknown_message
from loqi_core.hooks.specs import AggregatorSpec, DatasetSpec, DegradationSpec, EncoderSpec, LossSpec
from loqi_core.util.sources import code_version
from loqi_core.version import __version__

ENTRY_POINT_GROUP = "loqi"
DEFAULT_PLUGINS = {"losses": "loqi_core.losses", "folder": "loqi_core.data.folder_dataset"}
FIRST_PARTY = frozenset(
    f"loqi-plugin-{name}"
    for name in (
        "anyloc", "boq", "cricavpr", "demo", "dinov2", "effnet", "gangnam", "gsv-cities", "jpeg", "mixvpr", "msls",
        "netvlad", "nordland", "nyc-indoor", "pitts", "resolution", "salad", "serve", "tokyo247", "tum-lsi", "video",
        "video360",
    )
)  # fmt: skip
"""The plugins shipped with loqi: loaded before any third-party one, so a clash always keeps the built-in."""
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
HEAVY_MODULES = (
    "torch", "torchvision", "timm", "faiss", "av", "cv2", "transformers", "tensorflow", "jax", "scipy", "sklearn",
    "pandas", "matplotlib",
)  # fmt: skip
"""Libraries a plugin module must not import at import time: every ``loqi`` command imports every plugin."""
SLOW_IMPORT_S = 0.5
"""An entry point that takes longer than this to import is flagged by ``loqi plugins``."""

# hook name -> (registry attribute, spec class, singular kind used in messages)
REGISTER_HOOKS: dict[str, tuple[str, type, str]] = {
    "loqi_register_encoders": ("encoders", EncoderSpec, "encoder"),
    "loqi_register_aggregators": ("aggregators", AggregatorSpec, "aggregator"),
    "loqi_register_degradations": ("degradations", DegradationSpec, "degradation"),
    "loqi_register_losses": ("losses", LossSpec, "loss"),
    "loqi_register_datasets": ("datasets", DatasetSpec, "dataset"),
}


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``loqi plugins`` shows it."""

    name: str
    dist: str
    version: str
    module: str
    error: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    source: str | None = None
    """The module its hooks live in: the one the conformance kit imports, whose package the cache key digests."""
    import_seconds: float | None = None
    """How long importing its entry point took (None: added in-process, not imported from an entry point)."""
    heavy_imports: list[str] = field(default_factory=list)
    """``HEAVY_MODULES`` that importing its entry point pulled in (those not imported before it)."""

    @property
    def provider(self) -> Provider:
        return Provider(self.name, self.dist, self.version)

    def load_error(self) -> PluginLoadError:
        return PluginLoadError(f'Error loading plugin "{self.name}" (dist {self.dist} {self.version}): {self.error}')


class GuardedFactory:
    """A plugin's factory that names the plugin and its distribution when it raises something other than a LoqiError."""

    def __init__(self, factory: Callable[..., Any], kind: str, name: str, provider: Provider) -> None:
        self.factory, self.kind, self.name, self.provider = factory, kind, name, provider

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.factory(*args, **kwargs)
        except LoqiError:
            raise
        except Exception as exc:
            raise PluginLoadError(
                f'{self.kind} "{self.name}" of {self.provider} failed to build: {type(exc).__name__}: {exc}'
            ) from None


def source_module(plugin: Any) -> str | None:
    """The module a plugin's hooks are defined in: the module itself, else that of its first ``loqi_`` hook."""
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    hooks = [getattr(plugin, n) for n in sorted(dir(plugin)) if n.startswith("loqi_") and callable(getattr(plugin, n))]
    return next((h.__module__ for h in hooks if getattr(h, "__module__", None)), None)


def required_distributions(dist: str) -> set[str]:
    """Names (normalised: lower case, ``-``) of the distributions ``dist`` requires; empty when it is not installed."""
    try:
        requires = md.distribution(dist).requires or []
    except md.PackageNotFoundError:
        return set()
    names = (re.match(r"[A-Za-z0-9._-]+", r) for r in requires)
    return {normalise_dist(m.group(0)) for m in names if m}


def normalise_dist(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def first_party(dist: str) -> bool:
    return dist == "loqi-core" or dist in FIRST_PARTY


class Plugins:
    """The loaded plugin set and its five registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("loqi")
        self.pm.add_hookspecs(hookspecs)
        self.encoders: Registry[EncoderSpec] = Registry("encoder")
        self.aggregators: Registry[AggregatorSpec] = Registry("aggregator")
        self.degradations: Registry[DegradationSpec] = Registry("degradation")
        self.losses: Registry[LossSpec] = Registry("loss")
        self.datasets: Registry[DatasetSpec] = Registry("dataset")
        self.info: dict[str, PluginInfo] = {}
        self.command_owners: dict[str, str] = {}
        """Command name → the distribution that added it through ``loqi_register_commands``."""

    # ---- loading -------------------------------------------------------------------------------
    def load_defaults(self) -> None:
        for name, module in DEFAULT_PLUGINS.items():
            self.add(importlib.import_module(module), name=name, dist="loqi-core", version=__version__)

    def load_entry_points(self, strict: bool = False) -> None:
        """Import every ``loqi`` entry point; a failure is recorded (or raised when ``strict``)."""
        seen: set[tuple[str, str]] = set()
        points = list(md.entry_points(group=ENTRY_POINT_GROUP))
        points.sort(key=lambda ep: not first_party(ep.dist.name if ep.dist else "?"))  # built-ins win every clash
        for ep in points:
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                before, start = set(sys.modules), time.perf_counter()
                module = ep.load()
                seconds = time.perf_counter() - start
                info = self.add(module, name=ep.name, dist=dist, version=version)
                info.import_seconds = round(seconds, 3)
                info.heavy_imports = [m for m in HEAVY_MODULES if m in sys.modules and m not in before]
            except (Exception, SystemExit) as exc:  # a broken plugin (even one calling sys.exit) must not take the CLI down
                info = self.info.get(ep.name)
                if info is None or info.dist != dist:  # a clash: keep the plugin that holds the name, list this one too
                    info = PluginInfo(ep.name, dist, version, ep.value)
                    self.info.setdefault(ep.name if ep.name not in self.info else f"{ep.name} ({dist})", info)
                info.error = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise info.load_error() from None

    def add(self, plugin: Any, *, name: str, dist: str = "?", version: str = "?") -> PluginInfo:
        """Register one plugin object or module and collect what its hooks register."""
        if name in self.info:
            other = self.info[name]
            advice = "Uninstall one of them, or rename the entry point in one's [project.entry-points.loqi]."
            if "loqi-core" in (other.dist, dist):  # loqi-core's own names ("losses", "folder") cannot be uninstalled
                mine = dist if other.dist == "loqi-core" else other.dist
                advice = f'"{name}" is loqi-core\'s own: rename the entry point in dist {mine}\'s [project.entry-points.loqi].'
            raise PluginLoadError(
                f'Two plugins use the entry-point name "{name}": dist {other.dist} and dist {dist}; '
                f"kept the one from {other.dist}. {advice}"
            )
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, dist, version, module, source=source_module(plugin))
        self.info[name] = info
        self.pm.register(plugin, name=name)
        try:
            for caller in self.pm.get_hookcallers(plugin) or []:
                if not caller.has_spec():
                    known = ", ".join(sorted(REGISTER_HOOKS) + ["loqi_register_commands"])
                    raise PluginLoadError(f'plugin "{name}" implements unknown hook "{caller.name}". Known hooks: {known}')
            for hook_name, (attr, spec_cls, kind) in REGISTER_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._register_callback(info, attr, spec_cls, kind))
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            self.pm.unregister(plugin)
            for attr, _, kind in REGISTER_HOOKS.values():  # roll back what it registered before failing
                for spec_name in info.registered.pop(kind, []):
                    getattr(self, attr).remove(spec_name)
            raise
        return info

    def _register_callback(self, info: PluginInfo, attr: str, spec_cls: type, kind: str) -> Callable[[Any], None]:
        registry: Registry = getattr(self, attr)

        def register(spec: Any) -> None:
            if not isinstance(spec, spec_cls):
                raise PluginLoadError(
                    f'plugin "{info.name}" passed a {type(spec).__name__} to the {kind} hook; expected {spec_cls.__name__}'
                )
            if not NAME_RE.match(spec.name):
                raise PluginLoadError(f'plugin "{info.name}": bad {kind} name "{spec.name}" (use a-z, 0-9, "-", "_", ".")')
            if isinstance(spec, DegradationSpec):
                re.compile(spec.pattern)
            if not isinstance(spec, DatasetSpec):
                spec = dataclasses.replace(spec, factory=GuardedFactory(spec.factory, kind, spec.name, info.provider))
            registry.add(spec.name, spec, info.provider)
            info.registered.setdefault(kind, []).append(spec.name)

        return register

    def add_commands(self, cli: Any, strict: bool | None = None) -> None:
        """Let each plugin add its commands, one at a time: a plugin that raises, or that adds a command under a
        name already taken (``eval``), is listed as failed and leaves the command line as it was."""
        strict = strict_from_env() if strict is None else strict
        owners = {name: self.command_owners.get(name, "loqi-core") for name in cli.commands}
        for impl in self.pm.hook.loqi_register_commands.get_hookimpls():
            info = self.info.get(impl.plugin_name)
            if info is None or info.error:
                continue
            before = dict(cli.commands)
            error = None
            try:
                impl.function(cli=cli)
            except (Exception, SystemExit) as exc:
                error = f"loqi_register_commands raised {type(exc).__name__}: {exc}"
            clashes = [n for n, c in cli.commands.items() if n in before and before[n] is not c and owners[n] != info.dist]
            if clashes and error is None:
                error = "; ".join(
                    f'command "{n}" is already provided by dist {owners[n]}; kept that one, not dist {info.dist}'
                    for n in clashes
                )
            if error is None:  # its commands (a second call, as in tests, re-adds the same ones)
                for n in sorted(n for n, c in cli.commands.items() if before.get(n) is not c):
                    owners[n] = self.command_owners[n] = info.dist
                    if n not in info.registered.setdefault("command", []):
                        info.registered["command"].append(n)
                continue
            cli.commands.clear()
            cli.commands.update(before)  # the command line exactly as it was before this plugin
            self._fail(info, error)
            if strict:
                raise info.load_error()
            import click

            click.echo(f"Warning: {info.load_error()} (see `loqi plugins`)", err=True)

    def _fail(self, info: PluginInfo, error: str) -> None:
        """Mark a loaded plugin as failed and take back everything it registered."""
        info.error = error
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)
        for attr, _, kind in REGISTER_HOOKS.values():
            for spec_name in info.registered.pop(kind, []):
                getattr(self, attr).remove(spec_name)

    # ---- lookup --------------------------------------------------------------------------------
    def lookup(self, registry: Registry, name: str) -> Any:
        """``registry.get(name)``, but a name a broken plugin would provide names that plugin's error."""
        if name in registry:
            return registry.get(name)
        raise UnknownNameError(registry.unknown_message(name) + self.broken_hint(name))

    def broken_hint(self, name: str) -> str:
        """Raise the load error of a broken plugin named like ``name``; else a note listing broken plugins."""
        broken = [p for p in self.info.values() if p.error]
        for info in broken:
            if name.startswith(info.name):
                raise info.load_error()
        if not broken:
            return ""
        names = ", ".join(f'"{p.name}"' for p in broken)
        return f" (Plugins that failed to load: {names}; see `loqi plugins`.)"

    def encoder(self, name: str) -> EncoderSpec:
        return self.lookup(self.encoders, name)

    def aggregator(self, name: str) -> AggregatorSpec:
        return self.lookup(self.aggregators, name)

    def loss(self, name: str) -> LossSpec:
        return self.lookup(self.losses, name)

    def dataset(self, name: str) -> DatasetSpec:
        return self.lookup(self.datasets, name)

    def method(self, name: str) -> tuple[EncoderSpec, AggregatorSpec]:
        """``--method NAME``: the encoder registered as NAME and its default aggregator."""
        if name not in self.methods():
            raise UnknownNameError(unknown_message("method", name, self.methods()) + self.broken_hint(name))
        enc = self.encoders.get(name)
        return enc, self.aggregator(enc.default_aggregator or name)

    def methods(self) -> list[str]:
        """Encoder names that pair with an aggregator: what ``--method`` accepts."""
        return [n for n, spec, _ in self.encoders.items() if (spec.default_aggregator or n) in self.aggregators]

    def code_version(self, provider: Provider) -> str:
        """``provider``'s version plus a digest of the source files of its plugin's package and of the loaded plugins
        its distribution requires (salad builds on loqi-plugin-dinov2's ViT): what cached results are keyed by."""
        info = self.info.get(provider.plugin)
        if info is None or info.source is None:
            return provider.version
        required = required_distributions(provider.dist)
        modules = [info.source] + [p.source for p in self.info.values()
                                   if normalise_dist(p.dist) in required and p.source and not p.error]  # fmt: skip
        return code_version(provider.version, modules)

    def citations(self, parts: dict[str, list[str]]) -> dict[str, dict[str, str]]:
        """``{"encoder": {name: citation}, "aggregator": {...}}`` of the named parts that give a citation."""
        out: dict[str, dict[str, str]] = {}
        for kind, registry in (("encoder", self.encoders), ("aggregator", self.aggregators)):
            for name in parts.get(kind, []):
                if name in registry and registry.get(name).citation:
                    out.setdefault(kind, {})[name] = registry.get(name).citation
        return out

    def versions(self) -> dict[str, str]:
        """Distribution name → version of every loaded plugin (written into each run directory)."""
        return {p.dist: p.version for p in self.info.values()}


_PLUGINS: Plugins | None = None


def strict_from_env() -> bool:
    """``LOQI_STRICT_PLUGINS``: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    value = os.environ.get("LOQI_STRICT_PLUGINS", "")
    if value.strip().lower() in TRUE_WORDS:
        return True
    if value.strip().lower() in FALSE_WORDS:
        return False
    raise ConfigError(f'LOQI_STRICT_PLUGINS="{value}": expected 1, true, yes, on or 0, false, no, off')


def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        plugins = Plugins()
        plugins.load_defaults()
        plugins.load_entry_points(strict=strict_from_env())
        _PLUGINS = plugins
    return _PLUGINS


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace (or forget) the process-wide plugin set; tests use it to install fixture plugins."""
    global _PLUGINS
    _PLUGINS = plugins


__all__ = ["Plugins", "PluginInfo", "get_plugins", "reset_plugins", "LoqiError"]
