"""``loqi plugins``: what is installed, what each plugin registered, and what failed to load."""

from __future__ import annotations

import json

import click

from loqi_core.hooks.manager import SLOW_IMPORT_S, get_plugins

KINDS = ("encoder", "aggregator", "degradation", "loss", "dataset", "command")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: per plugin its name, dist, version, module, "
              "registered names, error, source module, import_seconds, heavy_imports and the citations of its parts.")
@click.option("--requirements", is_flag=True, help="Print pinned `dist==version` lines of the plugin set.")
def plugins_command(as_json: bool, requirements: bool) -> None:
    """List every plugin, its distribution and version, and what it registered under each extension point.

    Plugins that failed to import are listed with their error; commands that do not need them keep working.
    Set LOQI_STRICT_PLUGINS=1 to make any load error fatal. A plugin whose import took longer than 0.5 s, or pulled
    in a heavy library (torch, timm, ...), is flagged: every loqi command, `loqi --help` included, pays for it.
    The paper to cite for each encoder and aggregator follows the list.
    """
    plugins = get_plugins()
    infos = sorted(plugins.info.values(), key=lambda p: (p.dist != "loqi-core", p.name))
    if requirements:
        for dist, version in sorted(plugins.versions().items()):
            click.echo(f"{dist}=={version}")
        return
    if as_json:
        click.echo(json.dumps([{**vars(p), "citations": plugins.citations(p.registered)} for p in infos], indent=2))
        return
    rows = [("plugin", "distribution", "version", "registered")]
    for p in infos:
        what = "; ".join(f"{k}: {', '.join(p.registered[k])}" for k in KINDS if p.registered.get(k))
        rows.append((p.name, p.dist, p.version, f"FAILED: {p.error}" if p.error else what or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, row in enumerate(rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        if i == 0:
            click.echo("  ".join("-" * w for w in widths) + "  " + "-" * 10)
    methods = plugins.methods()
    click.echo(f"\nmethods (--method): {', '.join(methods) or 'none'}")
    _slow_imports(infos)
    _citations(plugins, infos)
    _degradation_forms(plugins)


def _slow_imports(infos) -> None:
    """Plugins whose import is slow or pulls in a heavy library (the first to import one is the one named)."""
    slow = [p for p in infos if p.heavy_imports or (p.import_seconds or 0) > SLOW_IMPORT_S]
    if not slow:
        return
    click.echo("\nslow to import (every loqi command, --help included, pays for it; import heavy libraries inside the "
               "factories, docs/plugin-guide.md):")  # fmt: skip
    for p in slow:
        heavy = f", imports {', '.join(p.heavy_imports)} at module level" if p.heavy_imports else ""
        click.echo(f"  {p.name} (dist {p.dist} {p.version}): {p.import_seconds:.2f} s{heavy}")


def _citations(plugins, infos) -> None:
    """Each encoder's and aggregator's paper; parts citing one paper share a line."""
    cited: dict[str, dict[str, list[str]]] = {}
    for p in infos:
        for kind, parts in plugins.citations(p.registered).items():
            for name, citation in parts.items():
                cited.setdefault(citation, {}).setdefault(name, []).append(kind)
    if cited:
        click.echo("\ncite (encoder/aggregator):")
        for citation, parts in cited.items():
            names = ", ".join(f"{name} ({'/'.join(kinds)})" for name, kinds in parts.items())
            click.echo(f"  {names}: {citation}")


def _degradation_forms(plugins) -> None:
    """Each degradation family's examples and range form, and the sampling grammar every family shares."""
    from loqi_core.degrade.grammar import range_form

    click.echo("\ndegradations (--degrade; chain with +, e.g. res360p+qp40):")
    rows = [(", ".join(d.examples or (name,)), range_form(d)) for name, d, _ in plugins.degradations.items()]
    width = max((len(r[0]) for r in rows), default=0)
    for examples, ranged in rows:
        click.echo(f"  {examples.ljust(width)}" + (f"  range: {ranged}" if ranged else ""))
    click.echo(
        "  sampled per image (per sequence for video codecs): a range NAME[LOW:HIGH] draws a value uniformly\n"
        "  (jpeg[5:50], res[270:720]p, scale[0.25:1]); any(A,B,...) draws one option (weighted: any(0.7*jpeg10,0.3*qp40))"
    )


COMMANDS = [plugins_command]
