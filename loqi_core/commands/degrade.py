"""``loqi degrade``: the command-line shell over ``loqi_core.degrade.engine`` (measure degradations, or write a degraded
copy of a dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from loqi_core.errors import ConfigError


@click.command("degrade")
@click.argument("specs", nargs=-1, required=True)
@click.option("--dataset", "-D", required=True, help="Dataset: demo, NAME (under --data-root), NAME:PATH or folder:PATH.")
@click.option("--report", is_flag=True, help="Print bytes per image, bits per pixel and PSNR of each SPEC; write nothing.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), help="Write the degraded copy here (one SPEC).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True, help="Which split of the dataset.")
@click.option("--images", "which", type=click.Choice(["all", "database", "queries", "train"]), default="all", show_default=True, help="Which image lists of the split.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images of each image list (sequences cut to them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Degradation seed (the same as loqi eval's --seed).")
@click.option("--device", default="cpu", show_default=True, help='Where images are degraded: "cpu", or "cuda" (JPEG then runs on nvJPEG).')
@click.option("--format", "fmt", type=click.Choice(["keep", "png"]), default="keep", show_default=True, help="keep: same file names and formats; png: lossless PNG everywhere.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures as JSON here.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA).")
def degrade_command(
    specs: tuple[str, ...], dataset: str, report: bool, out: Path | None, split: str, which: str, limit: int | None,
    seed: int, device: str, fmt: str, json_path: Path | None, data_root: str | None,
) -> None:  # fmt: skip
    """Measure what degradations cost, or write a degraded copy of a dataset.

    \b
    loqi degrade --report jpeg10 res270p qp40 h264-qp40 res270p+qp40 --dataset demo
    loqi degrade jpeg10 --dataset nordland --out /data/nordland-jpeg10

    --report prints, per SPEC, the bytes each image costs, bits per pixel and PSNR against the clean images,
    so a degradation can be chosen by bandwidth. Without it, the one SPEC is applied to the dataset and the
    images are written under --out at the same paths relative to the dataset root, with the same file names
    (JPEG files at quality 100 without chroma subsampling, other formats losslessly; --format png keeps
    every pixel exactly), plus the dataset's non-image files (ground truth) from the folders on the way,
    so `--dataset NAME:OUT` reads the copy. loqi-degrade.json records the spec, seed, protocol, figures and
    every file's coded bytes; a killed copy resumes when run again with the same arguments.

    Video codecs (qpN, h264-qpN, av1-qpN) encode each capture-order sequence of the dataset as one stream
    and every image without an order as its own one-frame (intra-only) stream, as `loqi eval` does.
    """
    from loqi_core.degrade.engine import SIDE_FILE_LIMIT, degrade_dataset, format_table, measure_degradations

    if not report and len(specs) != 1:
        raise ConfigError(f"give one SPEC to write a copy (got {len(specs)}: {' '.join(specs)}), or use --report")
    if not report and out is None:
        raise ConfigError("give --out DIR to write a degraded copy, or --report to measure without writing")
    if report and out is not None:
        raise ConfigError("--report writes nothing: drop --out (or drop --report to write a copy of one SPEC)")
    common = dict(split=split, images=which, limit=limit, seed=seed, device=device, data_root=data_root)

    if report:
        measured = measure_degradations(list(specs), dataset, **common)  # type: ignore[arg-type]
        click.echo(measured.header() + "\n")
        click.echo(measured.table())
        if json_path is not None:
            json_path.write_text(json.dumps(measured.as_dicts(), indent=2))
        return

    assert out is not None
    result = degrade_dataset(specs[0], dataset, out, fmt=fmt, **common)  # type: ignore[arg-type]
    click.echo(format_table([result.stats]))
    click.echo(
        f"\nwrote {result.stats.images} images under {out} (layout of {result.root}"
        + (f"; {result.resumed} already there from an earlier run" if result.resumed else "")
        + (f"; {result.side_files} non-image files copied" if result.side_files else "") + f"); manifest {result.manifest}"
    )  # fmt: skip
    if result.too_big:
        click.echo(f"not copied (over {SIDE_FILE_LIMIT >> 20} MB): " + ", ".join(str(p) for p in result.too_big))
    if result.reencoded_jpeg:
        click.echo("note: JPEG files were re-encoded at quality 100 (4:4:4), close to but not exactly the degraded pixels; --format png is exact")


COMMANDS = [degrade_command]
