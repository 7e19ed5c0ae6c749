"""Commands not built yet: they say so instead of pretending."""

import click

COMMANDS = []

@click.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi eval` is not built yet in this version of loqi-core.")


COMMANDS.append(eval_command)

@click.command("report", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def report_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi report` is not built yet in this version of loqi-core.")


COMMANDS.append(report_command)
