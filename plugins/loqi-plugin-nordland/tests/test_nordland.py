from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core import load_dataset
from loqi_core.plugin import DataError, ProtocolMismatchWarning
from loqi_core.testing import DatasetTests

SPACING = 25 / 1.5  # download_nordland_subset.py: 25 m = 1.5 frames


def write_nordland(root: Path, frames: int = 30, query_every: int = 10) -> Path:
    """The downloader's layout: @0@<north>@@@@@<frame>@@@@@@@@.jpg, frame-indexed queries every 10th frame."""
    rng = np.random.default_rng(0)
    for split in ("database", "queries"):
        (root / "images/test" / split).mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        name = f"@0@{i * SPACING:07.1f}@@@@@{i}@@@@@@@@.jpg"
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "images/test/database" / name)
        if i % query_every == 0:
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "images/test/queries" / name)
    return root


class TestNordland(DatasetTests):
    dataset = "nordland"

    def make(self, root):
        return write_nordland(root / "nordland")


def _frame(path: Path) -> int:
    return int(path.name.split("@")[7])


def test_sequences_follow_the_frame_index_not_the_name(tmp_path):
    write_nordland(tmp_path, frames=25)
    with pytest.warns(ProtocolMismatchWarning):
        test = load_dataset(f"nordland:{tmp_path}", "test")
    (db_run,) = test.database.sequences
    assert [_frame(test.database.paths[i]) for i in db_run] == list(range(25))
    (q_run,) = test.queries.sequences
    assert [_frame(test.queries.paths[i]) for i in q_run] == [0, 10, 20]


def test_positives_are_the_neighbouring_frames(tmp_path):
    write_nordland(tmp_path, frames=25)
    with pytest.warns(ProtocolMismatchWarning, match="database: expected 27592, found 25; queries: expected 2760, found 3"):
        test = load_dataset(f"nordland:{tmp_path}", "test")
    for q, pos in enumerate(test.ground_truth(25.0)):
        frames = sorted(_frame(test.database.paths[i]) for i in pos)
        f = _frame(test.queries.paths[q])
        assert frames == [x for x in (f - 1, f, f + 1) if 0 <= x < 25]


def test_a_name_without_frame_index_is_named(tmp_path):
    write_nordland(tmp_path, frames=5)
    bad = tmp_path / "images/test/database/@0@100.0@@@@@@@@@@@@@.jpg"
    Image.new("RGB", (8, 8)).save(bad)
    with pytest.raises(DataError, match="frame index") as info:
        load_dataset(f"nordland:{tmp_path}", "test")
    assert str(bad) in str(info.value)
