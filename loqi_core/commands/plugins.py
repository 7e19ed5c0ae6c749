"""``loqi plugins``: what is installed, what each plugin registered, and what failed to load."""

from __future__ import annotations

import json

import click

from loqi_core.hooks.manager import get_plugins

KINDS = ("encoder", "aggregator", "degradation", "loss", "dataset", "command")


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (name, dist, version, module, registered, error).")
@click.option("--requirements", is_flag=True, help="Print pinned `dist==version` lines of the plugin set.")
def plugins_command(as_json: bool, requirements: bool) -> None:
    """List every plugin, its distribution and version, and what it registered under each extension point.

    Plugins that failed to import are listed with their error; commands that do not need them keep working.
    Set LOQI_STRICT_PLUGINS=1 to make any load error fatal.
    """
    plugins = get_plugins()
    infos = sorted(plugins.info.values(), key=lambda p: (p.dist != "loqi-core", p.name))
    if requirements:
        for dist, version in sorted(plugins.versions().items()):
            click.echo(f"{dist}=={version}")
        return
    if as_json:
        click.echo(json.dumps([vars(p) for p in infos], indent=2))
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
    _degradation_forms(plugins)


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
