"""Flags every experiment command shares (model, degradation, config, run directory) and how they become a RunConfig."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import click

from loqi_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.config import RunConfig

# flag name (click parameter) -> RunConfig field it sets
COMMON_FIELDS = {
    "method": "model.method",
    "encoder": "model.encoder",
    "aggregator": "model.aggregator",
    "weights": "model.weights",
    "degrade": "degrade",
    "protocol": "protocol",
    "seed": "seed",
    "device": "device",
    "data_root": "data_root",
    "out": "out",
}


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--method/--encoder/--aggregator/--weights/--degrade/--protocol/--config/--out/--seed/--device/--data-root/--set``."""
    options = [
        click.option("--method", "-m", help="VPR method (see `loqi plugins`), e.g. lite0-gem, mixvpr, salad."),
        click.option("--encoder", help="Mix and match: encoder name (instead of, or overriding, --method)."),
        click.option("--aggregator", help="Mix and match: aggregator name."),
        click.option("--weights", "-w", help='"default", a variant ("official"), "random" (an honest smoke run), a file, a checkpoint or a run directory.'),
        click.option("--degrade", "-d", help="Degradation, e.g. jpeg10 (the default), res360p+qp40, qp40, none (clean)."),
        click.option("--protocol", type=click.Choice(["upstream", "paper"]),
                     help="upstream (default): each method as its release runs it; paper: as the LoQI-VPR authors ran it (docs/reproducing.md)."),
        click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="TOML or YAML config file (any RunConfig field)."),
        click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (default: a new folder under runs/)."),
        click.option("--seed", type=int, help="Seed of everything: sampling, degradation, augmentation, random init."),
        click.option("--device", help='"auto" (CUDA when available), "cpu", "cuda", "cuda:1".'),
        click.option("--data-root", type=click.Path(file_okay=False), help="Dataset root (default $LOQI_DATA)."),
        click.option("--set", "-s", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Any config field, e.g. -s distill.checkpoint_every=100 -s eval.ivf_nprobe=64 (null clears one)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def cli_overrides(kw: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted overrides from the flags that were given (None = not given), then every ``--set`` as written."""
    from loqi_core.config import parse_override

    given = {field: kw.get(flag) for flag, field in COMMON_FIELDS.items()} | (extra or {})
    overrides = {k: v for k, v in given.items() if v is not None}
    for text in kw.get("sets") or ():
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def config_from_flags(kw: dict[str, Any], extra: dict[str, Any] | None = None) -> "RunConfig":
    """The RunConfig of a command: defaults < method run_defaults < --config file < flags and --set."""
    from loqi_core.config import resolve_run_config

    config = resolve_run_config(kw.get("config_file"), cli_overrides(kw, extra))
    if config.model.method is None and config.model.encoder is None:
        raise ConfigError("give a method: --method NAME (see `loqi plugins` for the installed ones)")
    return config


def split_list(text: str | None) -> list[str] | None:
    """``"msls, nordland"`` → ["msls", "nordland"]; a comma inside double quotes (``folder:"a,b"``) does not split."""
    if not text:
        return None
    items, current, quoted = [], "", False
    for char in text:
        if char == "," and not quoted:
            items.append(current)
            current = ""
            continue
        quoted ^= char == '"'
        current += char
    items.append(current)
    return [t.strip() for t in items if t.strip()]


def take_deprecated(kw: dict[str, Any], old: str, new: str, old_flag: str, new_flag: str, where: str, why: str) -> None:
    """A deprecated spelling given: a warning on stderr, and its value goes to the new flag; both given is an error."""
    value = kw.pop(old, None)
    if value is None:
        return
    if kw.get(new) is not None:
        raise ConfigError(f"give {new_flag} only ({old_flag} is its deprecated spelling {where})")
    click.echo(f"Warning: {old_flag} is deprecated {where}: write {new_flag} ({why})", err=True)
    kw[new] = value
