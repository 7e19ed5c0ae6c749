"""``loqi distill`` and ``loqi finetune``: train a student through the distillation engine (``loqi_core.distill``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import click

from loqi_core.errors import ConfigError


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--method", "-m", help="VPR method (see `loqi plugins`), e.g. mixvpr, salad, lite0-gem."),
        click.option("--encoder", help="Mix and match: encoder name (instead of, or overriding, --method)."),
        click.option("--aggregator", help="Mix and match: aggregator name."),
        click.option("--weights", help='Starting weights: "default", a variant ("official"), "random", or a file.'),
        click.option("--degrade", "-d", help="Degradation the student sees, e.g. jpeg10, res360p+qp40 (default jpeg10)."),
        click.option("--train", "-t", help="Training set: NAME or NAME:PATH (folder:PATH for any folder of images)."),
        click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config file."),
        click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (default runs/<mode>-<method>-<degrade>-<time>)."),
        click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True),
                     help="Continue the run in this directory exactly where it stopped (its config.json is used)."),
        click.option("--max-steps", type=int, help="Train exactly this many steps (overrides the epoch count)."),
        click.option("--lr", type=float, help="Adam learning rate (paper: 1e-6)."),
        click.option("--batch-size", type=int, help="Images per batch on label-free training sets."),
        click.option("--seed", type=int, help="Seed of everything: sampling, degradation, augmentation."),
        click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda", "cuda:1".'),
        click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA)."),
        click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Any config field, e.g. -s distill.checkpoint_every=100 -s distill.augment=true."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _resolve(mode: str, kw: dict[str, Any], loss: str | None):
    from loqi_core.config import RunConfig, parse_override, resolve_run_config, set_dotted, validate

    overrides: dict[str, Any] = {
        "model.method": kw["method"], "model.encoder": kw["encoder"], "model.aggregator": kw["aggregator"],
        "model.weights": kw["weights"], "degrade": kw["degrade"], "distill.train": kw["train"],
        "distill.max_steps": kw["max_steps"], "distill.lr": kw["lr"], "distill.batch_size": kw["batch_size"],
        "seed": kw["seed"], "device": kw["device"], "data_root": kw["data_root"],
        ("distill.finetune_loss" if mode == "finetune" else "distill.loss"): loss,
    }  # fmt: skip
    set_keys = set()
    for text in kw["sets"]:
        key, value = parse_override(text)
        overrides[key] = value
        set_keys.add(key)
    if kw["resume_dir"]:
        run_dir = Path(kw["resume_dir"])
        cfg_file = run_dir / "config.json"
        if not cfg_file.exists():
            raise ConfigError(f"--resume {run_dir}: no config.json there (not a loqi run directory)")
        data = RunConfig.model_validate_json(cfg_file.read_text()).model_dump(mode="json")
        for dotted, value in overrides.items():
            if value is not None:
                set_dotted(data, dotted, value)
        return validate(data), run_dir
    config = resolve_run_config(kw["config_file"], overrides)
    nulls = [key for key, value in overrides.items() if value is None and key in set_keys]
    if nulls:  # -s key=null clears a default (resolve_run_config skips None values)
        data = config.model_dump(mode="json")
        for key in nulls:
            set_dotted(data, key, None)
        config = validate(data)
    if config.model.method is None and config.model.encoder is None:
        raise ConfigError("give a method: --method NAME (see `loqi plugins` for the installed ones)")
    out = Path(kw["out"]) if kw["out"] else config.out
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("under torchrun give --out DIR: every process must name the same run directory")
    if out is None:
        name = config.model.method or config.model.encoder
        out = Path("runs") / f"{mode}-{name}-{config.degrade}-{time.strftime('%Y%m%d-%H%M%S')}"
    return config, out


def _run(mode: str, kw: dict[str, Any], loss: str | None) -> None:
    import json

    from loqi_core.distill import distill

    config, out = _resolve(mode, kw, loss)
    final = distill(config, out, mode=mode, resume=bool(kw["resume_dir"]))  # type: ignore[arg-type]
    summary = out / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        terms = ", ".join(f"{k} {v:.4g}" for k, v in s["final_terms"].items())
        rate = f"{s['images_per_s']:.1f} img/s" if s["images_per_s"] else "rate n/a"
        click.echo(f"{s['steps']} steps ({rate}, {s['precision']}, {s['device']}); last step: {terms}")
    click.echo(f"student checkpoint: {final}")


@click.command("distill")
@_common_options
@click.option("--loss", "-l", help='Loss expression, e.g. ickd, "ickd+0.5*mse+triplet" (default: the method\'s best).')
def distill_command(loss: str | None, **kw: Any) -> None:
    """Distil a teacher into a student that copes with degraded images.

    A frozen teacher (the method's pretrained weights, eval mode) sees each clean training image; a student
    initialised from the same weights sees the same image degraded (--degrade, applied on the fly, seeded per
    image) and learns the teacher's outputs through the loss (--loss: ickd on the encoders' feature maps, mse
    on the descriptors, triplet on the student's descriptors, any registered loss, in weighted sums). Only the
    layers the method declares trainable are trained (override with -s 'distill.trainable=[...]').

    Paper defaults: Adam lr 1e-6, ExponentialLR 0.99999 per step, gradient-norm clip 1, batches of 6 places
    x 4 images, one epoch; every value can be set in --config or with -s.

    The run directory gets config.json, plugins.json, train_log.csv (every loss term of every step),
    summary.json and checkpoints/ (every distill.checkpoint_every steps and final/). A run killed at any moment
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
@_common_options
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
