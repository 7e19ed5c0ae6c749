"""``loqi run`` (the whole experiment in one command) and ``loqi sweep`` (one distillation per loss)."""

from __future__ import annotations

from typing import Any, Callable

import click

from loqi_core.commands.evaluate import eval_options, eval_overrides
from loqi_core.commands.options import config_from_flags, split_list
from loqi_core.errors import ConfigError


def train_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--train", "train", help="Training set: NAME or NAME:PATH (default demo; folder:PATH for any images)."),
        click.option("--test", "-t", "test", help="Test set(s), comma-separated: NAME or NAME:PATH (default demo)."),
        click.option("--max-steps", type=int, help="Train exactly this many steps (quick runs on a CPU)."),
        click.option("--lr", type=float, help="Adam learning rate (default: the method's, else the paper's 1e-6)."),
        click.option("--view-size", type=int, nargs=2, metavar="H W",
                     help="Training views' height and width (default: the test sets' typical image size, the scale at "
                          "which test images meet the degradation)."),
        click.option("--no-augment", is_flag=True, default=None, help="No random resized crop and flip of the training views."),
        click.option("--val", metavar="SPEC", help='Validate the student while it trains and keep the best one: "heldout" (label-free: the '
                                   "distillation loss on training images held out of training) or a test set (NAME, "
                                   "NAME:PATH, pitts30k?split=val: R@1 of its degraded queries). Rhythm and choice: -s "
                                   "distill.val_every=N or distill.val_parts=N, distill.val_database, distill.select."),
        click.option("--seeds", metavar="S1,S2,...", help="Run the whole experiment once per training seed (comma-separated, e.g. 0,1,2) into "
                                     "seed-<S>/ and report each seed beside the mean and spread; the test images are "
                                     "degraded alike in every run, so the teacher's rows come from the cache."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _extra(kw: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {**eval_overrides(kw), "distill.train": kw.pop("train"), "eval.test": split_list(kw.pop("test")),
            "distill.max_steps": kw.pop("max_steps"), "distill.lr": kw.pop("lr"),
            "distill.view_size": kw.pop("view_size") or None, "distill.augment": False if kw.pop("no_augment") else None,
            "distill.val": kw.pop("val"), **more}  # fmt: skip


def parse_seeds(text: str | None, seed: int | None) -> list[int]:
    """``--seeds "0,1,2"`` → [0, 1, 2] (unique, in order); not with --seed."""
    if text is None:
        return []
    if seed is not None:
        raise ConfigError("give --seed (one run) or --seeds (one run per seed), not both")
    try:
        seeds = [int(t) for t in split_list(text) or []]
    except ValueError:
        raise ConfigError(f'--seeds: expected seeds such as "0,1,2", got "{text}"') from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise ConfigError(f'--seeds: give distinct seeds of at least 0, e.g. "0,1,2" (got "{text}")')
    return seeds


@click.command("run")
@eval_options
@train_options
@click.option("--loss", "-l", help='Distillation loss, e.g. ickd, "ickd+0.5*mse+triplet" (default: the method\'s best in the paper).')
@click.option("--baseline", type=click.Choice(["finetune"]), help="Also train and evaluate the finetune baseline (no teacher).")
def run_command(loss: str | None, baseline: str | None, **kw: Any) -> None:
    """The whole experiment in one command, reported like the paper's Table II.

    \b
    1. evaluate the pretrained model (the teacher) on clean and on degraded images;
    2. distil: a frozen teacher sees clean training images, a student the degraded ones (--loss), as views
       of the test images' typical size (--view-size), randomly cropped and flipped (--no-augment: not);
    3. evaluate the student on degraded images;
    4. with --baseline finetune, fine-tune the model on degraded images without a teacher and evaluate it;
    5. write the report.

    Every default (training set, test sets, loss, input size, learning rate) comes from the method's plugin
    and can be overridden by --config FILE, then by flags. With no --train/--test the bundled demo dataset is
    used, so the command runs offline. --weights random gives an honest smoke run for methods whose weights
    are not on the machine (every output says the model is untrained); --max-steps and --image-size make
    quick runs possible on a CPU. Started again with the same --out, a killed run resumes its training and
    takes its evaluations from the cache.

    Before the first evaluation, one training batch and one image of every test set go through decoding,
    the degradation and the method's preprocessing: a broken input fails in seconds.

    The run directory gets config.json, plugins.json, run.log (command line, config sha256, stage timings,
    warnings, errors), metrics.json, results.md, recall.png,
    predictions/*.csv, grids/*.png (each query as the model saw it and clean, its top-k with score and
    distance, right/wrong; pretrained and distilled side by side; -s eval.grid_select=wrong|changed picks the
    queries), activations/*.png (teacher vs student encoder activation maps on one colour scale, the paper's
    Fig. 4) and the training runs in distill/ and finetune/.

    The table also holds "distilled queries vs pretrained database": the student's queries against the database
    the teacher encodes (with --clean-database, the map a deployment indexed once with the teacher).
    --val keeps the best validated student; --seeds runs the experiment once per training seed and reports each
    seed beside the mean and the spread, with paired sign tests.

    \b
    Examples:
      loqi run --method lite0-gem --degrade jpeg10
      loqi run --method lite0-gem --degrade jpeg10 --seeds 0,1,2 --clean-database
      loqi run --method lite0-gem --degrade jpeg10 --val heldout -s distill.val_every=20 -s distill.max_steps=240
      loqi run --method mixvpr --degrade jpeg10 --train gsv-cities --test nordland,msls --baseline finetune
      loqi run --method salad --degrade qp40 --weights random --max-steps 5 --image-size 224 224
    """
    from loqi_core.experiments.runner import run_experiment
    from loqi_core.experiments.seeds import over_seeds

    seeds = parse_seeds(kw.pop("seeds"), kw.get("seed"))
    config = config_from_flags(kw, _extra(kw, **{"distill.loss": loss}))
    if seeds:
        over_seeds(config, seeds, "run", lambda c: run_experiment(c, baseline=baseline, echo=click.echo), echo=click.echo)
    else:
        run_experiment(config, baseline=baseline, echo=click.echo)


@click.command("sweep")
@eval_options
@train_options
@click.option("--losses", default="all", show_default=True,
              help='Loss expressions, comma-separated, or "all": the paper\'s 7 combinations of ickd, mse and triplet.')
def sweep_command(losses: str, **kw: Any) -> None:
    """Distil once per loss expression and report them side by side (the paper's Fig. 3).

    The teacher is evaluated once (clean and degraded); each loss gets its own training run in
    distill-<loss>/ and its own row distilled:<loss> in metrics.json and results.md. Losses that need places
    (triplet) are skipped, with a note, on a label-free training set. Started again with the same --out, a
    sweep resumes where it stopped.

    \b
    Examples:
      loqi sweep --method mixvpr --degrade jpeg10 --losses all
      loqi sweep --method lite0-gem --degrade jpeg10 --losses "ickd,mse,ickd+0.5*mse" --max-steps 100
    """
    from loqi_core.experiments.runner import expand_losses, run_sweep
    from loqi_core.experiments.seeds import over_seeds

    seeds = parse_seeds(kw.pop("seeds"), kw.get("seed"))
    config = config_from_flags(kw, _extra(kw))
    expressions = expand_losses(losses)
    if seeds:
        over_seeds(config, seeds, "sweep", lambda c: run_sweep(c, expressions, echo=click.echo), echo=click.echo)
    else:
        run_sweep(config, expressions, echo=click.echo)


from loqi_core.commands.reproduce import COMMANDS as REPRODUCE  # noqa: E402  (cli.py lists command modules)

COMMANDS = [run_command, sweep_command, *REPRODUCE]
