"""The ``loqi`` command line: built-in commands plus whatever plugins add through ``loqi_register_commands``."""

from __future__ import annotations

import os
import sys

import click

from loqi_core.errors import LoqiError, one_line
from loqi_core.version import __version__


def debug() -> bool:
    """``LOQI_DEBUG=1``: let loqi's errors and OS errors through with their tracebacks (to debug loqi itself)."""
    return os.environ.get("LOQI_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


class LoqiGroup(click.Group):
    """Turns loqi's own errors and OS errors (permission, full disk, missing file) into one ``Error: ...`` line.

    Any other exception is a bug in loqi or a plugin and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            message = one_line(exc)
            if message is None or debug():
                raise
            raise click.ClickException(message) from None


@click.group(cls=LoqiGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loqi")
def cli() -> None:
    """loqi: make visual place recognition work on low-quality images.

    A frozen teacher sees the clean image, a student of the same VPR method sees the degraded one
    (JPEG, low resolution, video at a high QP) and learns to produce the teacher's descriptor.
    Methods, degradations, losses and datasets are plugins: see `loqi plugins`.

    \b
    Quick start (offline, on the bundled demo data):
      loqi run --method lite0-gem --degrade jpeg10
      loqi eval --method lite0-gem --dataset demo --degrade jpeg10
      loqi degrade --report jpeg10 --dataset demo
    """


def _add_builtin_commands() -> None:
    from loqi_core.commands import datasets, degrade, distill, evaluate, plugins, run

    for module in (plugins, datasets, degrade, distill, evaluate, run):
        for command in module.COMMANDS:
            cli.add_command(command)


def main() -> None:
    """Console-script entry point: add the built-in and plugin commands, then run."""
    from loqi_core.hooks.manager import get_plugins

    try:
        get_plugins().add_commands(cli)
    except LoqiError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    cli(prog_name="loqi")


_add_builtin_commands()


if __name__ == "__main__":
    main()
