"""Commands not built yet: they say so instead of pretending."""

import click

COMMANDS = []

@click.command("degrade", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def degrade_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi degrade` is not built yet in this version of loqi-core.")


COMMANDS.append(degrade_command)
