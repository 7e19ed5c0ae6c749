"""``loqi distill`` and ``loqi finetune``: train a student through the distillation engine (``loqi_core.training.engine``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import click

from loqi_core.commands.options import cli_overrides, common_options, config_from_flags, take_deprecated
from loqi_core.errors import ConfigError


def _distill_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--train", help="Training set: NAME or NAME:PATH (folder:PATH for any folder of images)."),
        click.option("-t", "old_train", hidden=True),  # deprecated: -t is --test in eval, run and sweep
        click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
                     help="Continue the run in this directory exactly where it stopped (its config.json is used)."),
        click.option("--max-steps", type=int, help="Train exactly this many steps (overrides the epoch count)."),
        click.option("--lr", type=float, help="Adam learning rate (paper: 1e-6)."),
        click.option("--batch-size", type=int, help="Training images per batch on label-free training sets (with places: "
                                                    "distill.places_per_batch x distill.images_per_place)."),
        click.option("--view-size", type=int, nargs=2, metavar="H W",
                     help="Training views' height and width: the scale at which the student meets the degradation; "
                          "use your test images' size (default: the method's input size, else the training images' typical size)."),
        click.option("--no-augment", is_flag=True, default=None, help="No random resized crop and flip of the training views."),
        click.option("--val", metavar="SPEC", help='Validate the student while it trains and keep the best one: "heldout" (label-free: the '
                                   "distillation loss on training images held out of training) or a test set (NAME, "
                                   "NAME:PATH, pitts30k?split=val: R@1 of its degraded queries). Rhythm and choice: -s "
                                   "distill.val_every=N or distill.val_parts=N, distill.val_database, distill.select."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return common_options(f)


def _resolve(mode: str, kw: dict[str, Any], loss: str | None):
    from loqi_core.config import RunConfig, set_dotted, validate

    take_deprecated(kw, "old_train", "train", "-t", "--train", "in distill and finetune", "in eval, run and sweep -t is --test")
    extra = {
        "distill.train": kw["train"], "distill.max_steps": kw["max_steps"], "distill.lr": kw["lr"],
        "distill.batch_size": kw["batch_size"], "distill.view_size": kw["view_size"] or None,
        "distill.augment": False if kw["no_augment"] else None, ("distill.finetune_loss" if mode == "finetune" else "distill.loss"): loss,
        "distill.val": kw["val"],
    }  # fmt: skip
    if kw["resume_dir"]:
        run_dir = Path(kw["resume_dir"])
        cfg_file = run_dir / "config.json"
        if not cfg_file.exists():
            raise ConfigError(f"--resume {run_dir}: no config.json there (not a loqi run directory)")
        data = RunConfig.model_validate_json(cfg_file.read_text()).model_dump(mode="json")
        for dotted, value in cli_overrides(kw, extra).items():
            set_dotted(data, dotted, value)
        return validate(data), run_dir
    config = config_from_flags(kw, extra)
    out = config.out
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give --out DIR: every process must name the same run directory")
    if out is None:
        name = config.model.method or config.model.encoder
        out = Path("runs") / f"{mode}-{name}-{config.degrade}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, out


def _run(mode: str, kw: dict[str, Any], loss: str | None) -> None:
    import json

    from loqi_core.report.validation import write_validation_plot
    from loqi_core.training.engine import distill, summary_line

    config, out = _resolve(mode, kw, loss)
    final = distill(config, out, mode=mode, resume=bool(kw["resume_dir"]))  # type: ignore[arg-type]  (errors go to run.log)
    summary = out / "summary.json"
    if summary.exists():
        click.echo(summary_line(json.loads(summary.read_text())))
    plot = write_validation_plot(out)
    if plot is not None:
        click.echo(f"validation curve: {plot}")
    click.echo(f"student checkpoint: {final}")


@click.command("distill")
@_distill_options
@click.option("--loss", "-l", help='Loss expression, e.g. ickd, "ickd+0.5*mse+triplet" (default: the method\'s best).')
def distill_command(loss: str | None, **kw: Any) -> None:
    """Distil a teacher into a student that copes with degraded images.

    A frozen teacher (the method's pretrained weights, eval mode) sees each clean training image; a student
    initialised from the same weights sees the same image degraded (--degrade, applied on the fly, seeded per
    image) and learns the teacher's outputs through the loss (--loss: ickd on the encoders' feature maps, mse
    on the descriptors, triplet on the student's descriptors, any registered loss, in weighted sums). Only the
    layers the method declares trainable are trained (override with -s 'distill.trainable=[...]').

    Every training image (any size, orientation, mode or format) becomes a view of --view-size: a crop of
    that aspect ratio, resized, with a random resized crop and flip unless --no-augment; the student's view is
    that view degraded. Give your test images' size there: it is the scale at which the student meets the
    degradation (default: the method's input size, else the training images' typical size). One decoded
    batch is checked before the model is built.

    Paper defaults: Adam lr 1e-6, ExponentialLR 0.99999 per step, gradient-norm clip 1, batches of 6 places
    x 4 images, one epoch; every value can be set in --config or with -s.

    The run directory gets config.json, plugins.json, train_log.csv (every loss term of every step),
    summary.json, run.log and checkpoints/ (every distill.checkpoint_every steps and final/). A run killed at any moment
    continues exactly with --resume RUN_DIR. The same command line works under
    `torchrun --nproc-per-node N loqi distill ...` (DDP; rank 0 writes).

    \b
    Examples:
      loqi distill --method mixvpr --degrade jpeg10 --loss ickd --train gsv-cities
      loqi distill --method lite0-gem --degrade jpeg10 --train demo --max-steps 120
      loqi distill --resume runs/distill-mixvpr-jpeg10-20250101-120000
    """
    _run("distill", kw, loss)


@click.command("finetune")
@_distill_options
@click.option("--loss", "-l", help="Metric-learning loss (default distill.finetune_loss = multisimilarity; or triplet).")
def finetune_command(loss: str | None, **kw: Any) -> None:
    """The paper's baseline: fine-tune the model on degraded images with a metric-learning loss, no teacher.

    Same engine, data pipeline, checkpoints and resume as `loqi distill`, but the student alone sees the
    degraded images and is trained with the multi-similarity loss (the loss MixVPR, SALAD and CricaVPR were
    trained with) or triplet. Needs a training set with places (images grouped by position).

    \b
    Example:
      loqi finetune --method mixvpr --degrade jpeg10 --train gsv-cities
    """
    _run("finetune", kw, loss)


COMMANDS = [distill_command, finetune_command]
