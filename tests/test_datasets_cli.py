"""`loqi datasets`, `loqi datasets info NAME` and `loqi datasets check NAME[:PATH]`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from loqi_core.cli import cli
from loqi_core.hooks.manager import get_plugins
from loqi_core.testing.tiny import write_vpr_folder


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_lists_every_registered_dataset():
    result = _run("datasets")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert listed == set(get_plugins().datasets.names())
    assert "folder" in listed


def test_info_of_the_folder_dataset():
    result = _run("datasets", "info", "folder")
    assert result.exit_code == 0
    assert "@<utm_east>@<utm_north>@" in result.output and "skip_bad" in result.output
    assert "no published counts" in result.output


@pytest.mark.parametrize(
    "name, must",
    [
        ("demo", ["NRK", "CC BY 3.0", "database 300, queries 300"]),
        ("msls", ["database 18871, queries 11084", "format_mapillary.py", "licence:"]),
        ("nordland", ["database 27592, queries 2760", "frame index"]),
        ("tokyo247", ["database 75984, queries 315"]),
        ("gsv-cities", ["Dataframes/<City>.csv", "OSL", "PRS"]),
        ("video360", ["frame,east,north", "fov_deg"]),
    ],
)
def test_info_says_source_licence_layout(name, must):
    if name not in get_plugins().datasets.names():
        pytest.skip(f"{name} plugin not installed")
    result = _run("datasets", "info", name)
    assert result.exit_code == 0
    for text in must:
        assert text in result.output, text


def test_unknown_dataset_is_one_line_with_suggestions():
    result = CliRunner().invoke(cli, ["datasets", "info", "foldr"])
    assert result.exit_code != 0 and "folder" in result.output and "Traceback" not in result.output


def test_check_reports_sizes_and_bad_files(tmp_path):
    write_vpr_folder(tmp_path, places=4)
    result = _run("datasets", "check", f"folder:{tmp_path}")
    assert result.exit_code == 0
    assert "database 4, queries 4" in result.output and "without a positive within 25 m: 0" in result.output
    bad = tmp_path / "images/test/queries/@1@2@.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    failed = CliRunner().invoke(cli, ["datasets", "check", f"folder:{tmp_path}"])
    assert failed.exit_code != 0 and str(bad) in failed.output
    skipped = _run("datasets", "check", f"folder:{tmp_path}", "--skip-bad")
    assert "skipped: " + str(bad) in skipped.output


def test_check_a_training_folder(tmp_path):
    write_vpr_folder(tmp_path / "frames", places=3)
    result = _run("datasets", "check", f"folder:{tmp_path / 'frames/images/test/database'}", "--split", "train")
    assert result.exit_code == 0 and "3 training images, 3 places" in result.output
