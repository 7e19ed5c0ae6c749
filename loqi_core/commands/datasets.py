"""``loqi datasets``: the registered datasets, where each comes from, its layout, and a check of a copy on disk."""

from __future__ import annotations

import warnings

import click

from loqi_core.hooks.manager import get_plugins


def _splits(spec) -> str:
    return "+".join(k for k, f in (("test", spec.test), ("train", spec.train)) if f) or "-"


def _counts(expected: dict[str, int]) -> str:
    return " / ".join(f"{expected[k]:,}".replace(",", " ") for k in ("database", "queries") if k in expected)


@click.group("datasets", invoke_without_command=True)
@click.pass_context
def datasets_command(ctx: click.Context) -> None:
    """List the registered datasets: test sets, training sets, or both.

    Datasets are read from disk, never downloaded at run time: `loqi datasets info NAME` says where to get
    one, its licence and how to lay it out; `loqi datasets check NAME` reads your copy and compares it with the
    published split. Give a dataset as NAME (read from --data-root or $LOQI_DATA, folder NAME) or NAME:PATH.

    \b
    Columns: name, splits, published database / queries of the test split, plugin, description.
    """
    if ctx.invoked_subcommand is not None:
        return
    plugins = get_plugins()
    rows = [(n, _splits(s), _counts(s.expected_counts) or "-", p.dist, s.description) for n, s, p in plugins.datasets.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    for row in sorted(rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])


@datasets_command.command("info")
@click.argument("name")
def info_command(name: str) -> None:
    """Where dataset NAME comes from, its licence, its expected layout and sizes, and its parameters."""
    spec = get_plugins().dataset(name)
    click.echo(f"{spec.name}: {spec.description}")
    click.echo(f"splits: {_splits(spec)}")
    if spec.source:
        click.echo(f"\nsource: {spec.source}")
    click.echo(f"licence: {spec.license or 'not stated by the plugin'}")
    if spec.expected_counts:
        click.echo("expected (test split): " + ", ".join(f"{k} {v}" for k, v in spec.expected_counts.items()))
    else:
        click.echo("expected (test split): no published counts known to the plugin; none are checked")
    if spec.layout:
        click.echo(f"\nlayout:\n{spec.layout}")
    click.echo("\nparameters:")
    for field, info in spec.params.model_fields.items():
        click.echo(f"  {field} (default {info.default!r}): {info.description or ''}")


@datasets_command.command("check")
@click.argument("dataset")
@click.option("--split", "kind", type=click.Choice(["test", "train"]), default=None, help="Which side to read (default: test if it has one).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Dataset root (default $LOQI_DATA).")
@click.option("--skip-bad", is_flag=True, help="Leave out unreadable or badly named files and list them instead of stopping.")
def check_command(dataset: str, kind: str | None, data_root: str | None, skip_bad: bool) -> None:
    """Read DATASET (NAME, NAME:PATH, optionally ?key=value options) and compare it with the published split.

    Every file gets the cheap check (signature and end marker); a bad file stops the check with its name,
    or with --skip-bad is listed. Nothing is written.
    """
    from loqi_core.data.datasets import load_dataset, split_options
    from loqi_core.data.sets import TestSet

    spec = get_plugins().dataset(split_options(dataset)[0].partition(":")[0])
    kind = kind or ("test" if spec.test else "train")
    params = {"skip_bad": True} if skip_bad and "skip_bad" in spec.params.model_fields else None
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        data = load_dataset(dataset, kind, root=data_root, params=params)  # type: ignore[arg-type]
    if isinstance(data, TestSet):
        click.echo(f"{data.name}: database {len(data.database)}, queries {len(data.queries)}")
        for label, images in (("database", data.database), ("queries", data.queries)):
            seq = f"{len(images.sequences)} sequence(s)" if images.sequences else "no sequence order"
            click.echo(f"  {label}: {'positions' if images.positions is not None else 'no positions'}, {seq}")
        gt = data.ground_truth(25.0) if (data.positives is not None or data.database.positions is not None) else None
        if gt is not None:
            click.echo(f"  queries without a positive within 25 m: {sum(len(g) == 0 for g in gt)}")
    else:
        places = f"{len(data.places())} places" if data.place_ids is not None else "label-free (no places)"
        click.echo(f"{data.name}: {len(data.images)} training images, {places}")
    for note in data.notes:
        click.echo(f"  note: {note}")
    for line in data.skipped:
        click.echo(f"  skipped: {line}")
    if isinstance(data, TestSet) and not any("PROTOCOL MISMATCH" in n for n in data.notes):
        expected = data.expected_counts if data.expected_counts is not None else spec.expected_counts
        click.echo("  counts match the expected split" if expected else "  no published counts to compare with")


COMMANDS = [datasets_command]
