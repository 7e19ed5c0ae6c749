"""``loqi datasets``: the registered datasets, where each comes from, and the layout it expects."""

from __future__ import annotations

import click

from loqi_core.plugins import get_plugins


@click.group("datasets", invoke_without_command=True)
@click.pass_context
def datasets_command(ctx: click.Context) -> None:
    """List the registered datasets (test sets, training sets, or both).

    Datasets are read from disk, never downloaded at run time: `loqi datasets info NAME` says where to get one
    and how to lay it out. Give a dataset as NAME (under --data-root or $LOQI_DATA) or NAME:PATH.
    """
    if ctx.invoked_subcommand is not None:
        return
    plugins = get_plugins()
    for name, spec, provider in plugins.datasets.items():
        kinds = "+".join(k for k, f in (("test", spec.test), ("train", spec.train)) if f) or "-"
        click.echo(f"{name:<16} {kinds:<11} {provider.dist:<28} {spec.description}")


@datasets_command.command("info")
@click.argument("name")
def info_command(name: str) -> None:
    """Where a dataset comes from, its licence, its expected layout and sizes, and its parameters."""
    spec = get_plugins().dataset(name)
    click.echo(f"{spec.name}: {spec.description}")
    if spec.source:
        click.echo(f"\nsource: {spec.source}")
    if spec.license:
        click.echo(f"licence: {spec.license}")
    if spec.expected_counts:
        click.echo("expected: " + ", ".join(f"{k} {v}" for k, v in spec.expected_counts.items()))
    if spec.layout:
        click.echo(f"\nlayout:\n{spec.layout}")
    click.echo("\nparameters:")
    for field, info in spec.params.model_fields.items():
        click.echo(f"  {field} (default {info.default!r}): {info.description or ''}")


COMMANDS = [datasets_command]
