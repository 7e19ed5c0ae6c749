"""``loqi reproduce table2 | table3 | table4 | fig5``: the paper's experiments in one command each (plan, run,
compare with the published numbers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import click

from loqi_core.commands.options import cli_overrides, split_list


@click.group("reproduce")
def reproduce_group() -> None:
    """Reproduce the paper's experiments as its authors ran them (--protocol paper)."""


def _options(default_out: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every reproduction shares."""
    options = [
        click.option("--weights", "-w", help='"default" (official), "random" (an honest smoke run), or a variant name.'),
        click.option("--max-steps", type=int, help="Train exactly this many steps (default: one pass, as the paper)."),
        click.option("--protocol", type=click.Choice(["paper", "upstream"]), default="paper", show_default=True,
                     help="paper: as the authors ran it; upstream: each method as its release runs it (for comparison)."),
        click.option("--out", "-o", type=click.Path(file_okay=False), default=default_out, show_default=True,
                     help="Directory of the reproduction: one run folder per method (and degradation), and results.md."),
        click.option("--dry-run", is_flag=True, help="Print the plan (runs, published rows, training recipe, datasets, "
                                                     "weights and files, what is missing, GPU-hours) and stop."),
        click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config for every run."),
        click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), help="Evaluation cache (default $LOQI_CACHE or ~/.cache/loqi)."),
        click.option("--image-size", type=(int, int), default=None, metavar="H W", help="Input size overriding every method's (smoke runs)."),
        click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda", "cuda:1".'),
        click.option("--seed", type=int, help="Seed of everything."),
        click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Any config field for every run."),
    ]  # fmt: skip

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _reproduce(table: str, runs_of: Callable[[Path], list[Any]], protocol: str, out: str, dry_run: bool,
               config_file: str | None, kw: dict[str, Any]) -> None:  # fmt: skip
    from loqi_core.experiments.reproduce import describe_plan, run_plan

    base = cli_overrides(
        {**kw, "out": None},
        {"model.image_size": list(kw["image_size"]) if kw.get("image_size") else None, "eval.cache_dir": kw.get("cache_dir"),
         "distill.max_steps": kw.get("max_steps")},
    )  # fmt: skip
    runs = runs_of(Path(out))
    if dry_run:
        click.echo(describe_plan(table, runs, base, config_file, protocol))
        return
    results = run_plan(table, runs, base, Path(out), config_file, protocol, echo=click.echo)
    if results.exists() and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"\n{results.read_text()}\nresults: {results}")


@reproduce_group.command("table2")
@click.option("--methods", help="Methods, comma-separated (default: the paper's mixvpr, cricavpr, salad, netvlad, anyloc).")
@click.option("--degrade", "-d", "degrades", help="Degradations, comma-separated (default jpeg10, the paper's Table II).")
@click.option("--test", "tests", help="Test sets, comma-separated (default msls, nordland, tokyo247).")
@click.option("--train", help="Training set for every run (default: gsv-cities for JPEG, pitts250k otherwise, as the paper).")
@_options("runs/table2")
def table2_command(methods: str | None, degrades: str | None, tests: str | None, train: str | None, protocol: str,
                   out: str, dry_run: bool, config_file: str | None, **kw: Any) -> None:  # fmt: skip
    """The paper's Table II: methods × degradations × test sets, pretrained / finetuned / distilled.

    \b
    Each method and degradation is one `loqi run` in OUT/<method>__<degrade>/ with the paper protocol:
    the teacher on clean and degraded images, the finetune baseline (not for AnyLoc, as in the paper; the
    authors' finetune code is unpublished, so it trains with each method's own published loss) and the
    student distilled with the method's best loss in the paper (MixVPR, CricaVPR, SALAD: ickd; NetVLAD: mse;
    AnyLoc: ickd+triplet), trained as the authors trained: GSV-Cities' 300x400 cities at their native size,
    168-image steps of tuples mined once with the pretrained teacher, validation after each sixth of the epoch
    on Pitts30k-val and the best checkpoint as the student. A finished run is skipped; a killed one resumes.
    OUT/results.md puts loqi's numbers, the published ones and their difference side by side.

    \b
    Examples:
      loqi reproduce table2 --dry-run --data-root /data
      loqi reproduce table2 --data-root /data
      loqi reproduce table2 --methods mixvpr --test nordland --data-root /data
      loqi reproduce table2 --methods netvlad --weights random --max-steps 2 --data-root tiny/
      torchrun --nproc-per-node 8 $(which loqi) reproduce table2 --data-root /data
    """
    from loqi_core.experiments.reproduce import plan_table2

    _reproduce("table2", lambda o: plan_table2(split_list(methods), split_list(degrades), split_list(tests), out=o, train=train),
               protocol, out, dry_run, config_file, kw)  # fmt: skip


@reproduce_group.command("table3")
@click.option("--methods", help="Methods, comma-separated (default: the paper's five).")
@click.option("--test", "tests", help="Test sets, comma-separated (default tum-lsi, gangnam, nyc-indoor).")
@_options("runs/table3")
def table3_command(methods: str | None, tests: str | None, protocol: str, out: str, dry_run: bool,
                   config_file: str | None, **kw: Any) -> None:  # fmt: skip
    """The paper's Table III: the pretrained methods on three indoor sets, clean and at JPEG quality 10.

    \b
    One `loqi eval` per method in OUT/<method>/ (clean and jpeg10, R@1 and R@5 beside the paper's); the paper
    distils nothing here, so neither does this.

    \b
    Examples:
      loqi reproduce table3 --dry-run --data-root /data
      loqi reproduce table3 --methods netvlad,mixvpr --data-root /data
    """
    from loqi_core.experiments.reproduce import plan_table3

    _reproduce("table3", lambda o: plan_table3(split_list(methods), split_list(tests), out=o), protocol, out, dry_run,
               config_file, kw)  # fmt: skip


@reproduce_group.command("table4")
@click.option("--degrade", "-d", help="Reduced resolution to train and test at (default res180p: the authors' Pitts250k "
                                      "trainer config; the paper's text gives neither).")
@click.option("--test", "tests", help="Test sets, comma-separated (default msls, nordland, tokyo247).")
@click.option("--train", help="Training set (default pitts250k, as the paper).")
@_options("runs/table4")
def table4_command(degrade: str | None, tests: str | None, train: str | None, protocol: str, out: str, dry_run: bool,
                   config_file: str | None, **kw: Any) -> None:  # fmt: skip
    """The paper's Table IV: NetVLAD distilled on Pitts250k at reduced resolution, on the outdoor sets.

    \b
    One `loqi sweep` in OUT/netvlad__<degrade>/ with the losses the paper found best per test set (mse; ickd+mse
    on Tokyo 24/7); results.md puts each beside the published row. No finetune row, as in the paper.

    \b
    Examples:
      loqi reproduce table4 --dry-run --data-root /data
      loqi reproduce table4 --degrade res240p --data-root /data
    """
    from loqi_core.experiments.reproduce import plan_table4

    _reproduce("table4", lambda o: plan_table4(degrade, split_list(tests), out=o, train=train), protocol, out, dry_run,
               config_file, kw)  # fmt: skip


@reproduce_group.command("fig5")
@click.option("--resolutions", help="Test resolutions (heights), comma-separated (default 135,270).")
@click.option("--qps", help="Quantization parameters, comma-separated (default 30,33,...,48, as the paper).")
@click.option("--test", "tests", help="Test sets, comma-separated (default video360, the authors' 360° video set).")
@click.option("--degrade", "-d", help="Reduced resolution to train at (default res180p, the authors' trainer config).")
@click.option("--train", help="Training set (default pitts250k, as the paper).")
@_options("runs/fig5")
def fig5_command(resolutions: str | None, qps: str | None, tests: str | None, degrade: str | None, train: str | None,
                 protocol: str, out: str, dry_run: bool, config_file: str | None, **kw: Any) -> None:  # fmt: skip
    """The paper's Fig. 5: NetVLAD on the 360° video set across resolutions and QPs, pretrained against distilled.

    \b
    One `loqi sweep` in OUT/netvlad__<degrade>/: trained on Pitts250k at reduced resolution with ickd, mse and
    ickd+mse, every model evaluated at each res<R>p+qp<Q> (HEVC at constant QP); OUT/fig5.png plots R@1 against
    QP, one panel per resolution, as the paper's figure. The paper gives no numbers for Fig. 5.

    \b
    Examples:
      loqi reproduce fig5 --dry-run --data-root /data
      loqi reproduce fig5 --resolutions 270 --qps 30,39,48 --data-root /data
    """
    from loqi_core.experiments.reproduce import plan_fig5

    def ints(text: str | None, name: str) -> list[int] | None:
        try:
            return [int(x) for x in split_list(text)] if text else None
        except ValueError:
            raise click.BadParameter(f"give integers, comma-separated (got {text!r})", param_hint=name) from None

    res, qp = ints(resolutions, "--resolutions"), ints(qps, "--qps")
    _reproduce("fig5", lambda o: plan_fig5(res, qp, split_list(tests), out=o, train=train, degrade=degrade), protocol,
               out, dry_run, config_file, kw)  # fmt: skip


COMMANDS = [reproduce_group]
