from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core import load_dataset
from loqi_core.plugin import DataError, ProtocolMismatchWarning, get_plugins
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


def write_pitts(root: Path) -> Path:
    """Test split from the tiny writer, plus a training split: 3 places x (2 database + 1 query) images."""
    write_vpr_folder(root, places=4)
    rng = np.random.default_rng(1)
    for place in range(3):
        for k, split in enumerate(("database", "database", "queries")):
            east = 585000.0 + place * 50 + k * 2
            (root / "images/train" / split).mkdir(parents=True, exist_ok=True)
            name = f"@{east:.2f}@4477000.00@17@T@40.44@-79.99@p{place}k{k}@@@@@@@@.jpg"
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(root / "images/train" / split / name)
    return root


class TestPitts30k(DatasetTests):
    dataset = "pitts30k"

    def make(self, root):
        return write_pitts(root / "pitts30k")


class TestPitts250k(DatasetTests):
    dataset = "pitts250k"

    def make(self, root):
        return write_pitts(root / "pitts250k")


def test_training_places_come_from_positions(tmp_path):
    write_pitts(tmp_path / "pitts250k")
    train = load_dataset("pitts250k", "train", root=tmp_path)
    assert len(train.images) == 9
    groups = sorted(sorted(p.name.split("@")[7][:2] for p in (train.images.paths[i] for i in v)) for v in train.places().values())
    assert groups == [["p0"] * 3, ["p1"] * 3, ["p2"] * 3]


def test_each_split_has_its_own_protocol(tmp_path):
    root = write_pitts(tmp_path / "p")
    with pytest.warns(ProtocolMismatchWarning, match="expected 10000, found 4; queries: expected 6816"):
        load_dataset(f"pitts30k:{root}", "test")
    with pytest.warns(ProtocolMismatchWarning, match="expected 91464, found 6; queries: expected 7824, found 3"):
        load_dataset(f"pitts250k:{root}", "test", params={"split": "train"})


def test_training_needs_coordinates(tmp_path):
    root = write_pitts(tmp_path / "p")
    Image.new("RGB", (8, 8)).save(root / "images/train/database/plain.jpg")
    with pytest.raises(DataError, match="plain.jpg"):
        load_dataset(f"pitts30k:{root}", "train")


def test_both_variants_are_listed():
    names = get_plugins().datasets.names()
    assert {"pitts30k", "pitts250k"} <= set(names)
