"""Commands not built yet: they say so instead of pretending."""

import click

COMMANDS = []

@click.command("distill", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def distill_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi distill` is not built yet in this version of loqi-core.")


COMMANDS.append(distill_command)

@click.command("finetune", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def finetune_command() -> None:
    """(not built yet)"""
    raise click.ClickException("`loqi finetune` is not built yet in this version of loqi-core.")


COMMANDS.append(finetune_command)
