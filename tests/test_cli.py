"""The command line: every command documents itself, and loqi's errors print as one line, not a traceback."""

import subprocess
import sys

import click
from click.testing import CliRunner

from loqi_core.cli import cli


def _commands(group: click.Group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_command_has_help_that_reads_like_documentation():
    from loqi_core.hooks.manager import get_plugins

    get_plugins().add_commands(cli)
    seen = []
    for path, command in _commands(cli):
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert len((command.help or "").strip()) > 20, f"`loqi {' '.join(path)}` needs a real --help text"
        seen.append(path[0])
    for required in ("run", "distill", "finetune", "eval", "degrade", "plugins", "datasets", "report", "sweep"):
        assert required in seen


def test_loqi_errors_are_one_line_without_traceback():
    result = subprocess.run([sys.executable, "-m", "loqi_core.cli", "datasets", "info", "no-such-dataset"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith('Error: Unknown dataset "no-such-dataset".')
    assert "Traceback" not in result.stderr
