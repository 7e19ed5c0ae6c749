"""``loqi reproduce table2``: the paper's Table II in one command (plan, run, compare with the published numbers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from loqi_core.commands.options import cli_overrides, split_list


@click.group("reproduce")
def reproduce_group() -> None:
    """Reproduce the paper's experiments as its authors ran them (--protocol paper)."""


@reproduce_group.command("table2")
@click.option("--methods", help="Methods, comma-separated (default: the paper's mixvpr, cricavpr, salad, netvlad, anyloc).")
@click.option("--degrade", "-d", "degrades", help="Degradations, comma-separated (default jpeg10, the paper's Table II).")
@click.option("--test", "tests", help="Test sets, comma-separated (default msls, nordland, tokyo247).")
@click.option("--train", help="Training set for every run (default: gsv-cities for JPEG, pitts250k otherwise, as the paper).")
@click.option("--weights", "-w", help='"default" (official), "random" (an honest smoke run), or a variant name.')
@click.option("--max-steps", type=int, help="Train exactly this many steps (default: one pass, as the paper).")
@click.option("--protocol", type=click.Choice(["paper", "upstream"]), default="paper", show_default=True,
              help="paper: as the authors ran it; upstream: each method as its release runs it (for comparison).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default="runs/table2", show_default=True,
              help="Grid directory: one run folder per method and degradation, and results.md.")
@click.option("--dry-run", is_flag=True, help="Print the plan (runs, datasets and weights, what is missing) and stop.")
@click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config for every run.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Evaluation cache (default $LOQI_CACHE or ~/.cache/loqi).")
@click.option("--image-size", type=(int, int), default=None, metavar="H W", help="Input size overriding every method's (smoke runs).")
@click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda", "cuda:1".')
@click.option("--seed", type=int, help="Seed of everything.")
@click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE", help="Any config field for every run.")
def table2_command(methods: str | None, degrades: str | None, tests: str | None, train: str | None, protocol: str,
                   out: str, dry_run: bool, config_file: str | None, **kw: Any) -> None:  # fmt: skip
    """The paper's Table II: methods × degradations × test sets, pretrained / finetuned / distilled.

    \b
    Each method and degradation is one `loqi run` in OUT/<method>__<degrade>/ with the paper protocol:
    the teacher on clean and degraded images, the finetune baseline (not for AnyLoc, as in the paper) and
    the student distilled with the method's best loss in the paper (MixVPR, CricaVPR, SALAD: ickd;
    NetVLAD: mse; AnyLoc: ickd+triplet). A finished run is skipped; a killed one resumes. OUT/results.md
    puts loqi's numbers, the published ones and their difference side by side. Under torchrun, every run
    shares its extraction across the ranks.

    \b
    Examples:
      loqi reproduce table2 --dry-run --data-root /data
      loqi reproduce table2 --data-root /data
      loqi reproduce table2 --methods mixvpr --test nordland --data-root /data
      loqi reproduce table2 --methods netvlad --weights random --max-steps 2 --data-root tiny/
      torchrun --nproc-per-node 8 $(which loqi) reproduce table2 --data-root /data
    """
    from loqi_core.experiments.reproduce import describe_plan, plan_table2, run_table2

    base = cli_overrides(
        {**kw, "out": None},
        {"model.image_size": list(kw["image_size"]) if kw.get("image_size") else None, "eval.cache_dir": kw.get("cache_dir"),
         "distill.max_steps": kw.get("max_steps")},
    )  # fmt: skip
    runs = plan_table2(split_list(methods), split_list(degrades), split_list(tests), out=Path(out), train=train)
    if dry_run:
        click.echo(describe_plan(runs, base, config_file, protocol))
        return
    results = run_table2(runs, base, Path(out), config_file, protocol, echo=click.echo)
    if results.exists() and int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"\n{results.read_text()}\nresults: {results}")


COMMANDS = [reproduce_group]
