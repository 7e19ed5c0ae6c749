"""Commands not built yet: they say so instead of pretending."""

import click

COMMANDS = []

@click.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def run_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi run` is not built yet in this version of loqi-core.")


COMMANDS.append(run_command)

@click.command("sweep", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def sweep_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi sweep` is not built yet in this version of loqi-core.")


COMMANDS.append(sweep_command)
