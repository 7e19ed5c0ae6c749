import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from loqi_core import load_dataset
from loqi_core.testing import DatasetTests
from loqi_plugin_demo import DATA


class TestDemo(DatasetTests):
    dataset = "demo"

    def make(self, root):
        shutil.copytree(DATA, root / "demo")
        return root / "demo"


def _frame(path) -> int:
    return int(path.name.split("@")[7])


@pytest.fixture(scope="module")
def test_set():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bundled copy matches its expected counts
        return load_dataset("demo", "test")


def test_bundled_test_split(test_set):
    assert len(test_set.database) == 300 and len(test_set.queries) == 300
    assert all("summer" not in str(p) for p in test_set.queries.paths)
    for q, pos in enumerate(test_set.ground_truth(25.0)):
        f = _frame(test_set.queries.paths[q])
        got = sorted(_frame(test_set.database.paths[i]) for i in pos)
        assert got == [x for x in range(f - 2, f + 3) if x in {_frame(p) for p in test_set.database.paths}]
        assert f in got


def test_sequences_are_three_stretches_in_frame_order(test_set):
    for images in (test_set.database, test_set.queries):
        runs = [[_frame(images.paths[i]) for i in run] for run in images.sequences]
        assert [len(r) for r in runs] == [100, 100, 100]
        assert all(r == list(range(r[0], r[0] + 100)) for r in runs)


def test_bundled_train_split_is_disjoint_with_places_of_four():
    train = load_dataset("demo", "train")
    assert len(train.images) == 600
    places = train.places()
    assert len(places) == 150 and all(len(v) == 4 for v in places.values())
    test_frames = {_frame(p) for p in load_dataset("demo", "test").database.paths}
    assert not test_frames & {_frame(p) for p in train.images.paths}
    for idx in places.values():  # a place: two neighbouring frames, summer and winter of each
        frames = sorted(_frame(train.images.paths[i]) for i in idx)
        assert frames[0] == frames[1] and frames[2] == frames[3] == frames[0] + 1


def test_data_root_does_not_hide_the_bundled_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_DATA", str(tmp_path))
    assert len(load_dataset("demo", "test").queries) == 300


def test_package_data_is_small():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert (DATA / "NOTICE.txt").read_text().count("NRK") >= 2


def test_raw_pixel_nearest_neighbour_is_far_above_chance(test_set):
    """The figures quoted by `loqi datasets info demo`: raw pixels R@1 about 34 %, chance about 1.6 %."""

    def load(paths):
        x = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() for p in paths])
        return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)

    db, q = load(test_set.database.paths), load(test_set.queries.paths)
    nearest = ((db**2).sum(1)[None] - 2 * q @ db.T).argmin(1)  # squared distance up to a per-query constant
    gt = test_set.ground_truth(25.0)
    r1 = np.mean([nearest[i] in gt[i] for i in range(len(gt))]) * 100
    chance = np.mean([len(g) for g in gt]) / len(test_set.database) * 100
    assert 30 < r1 < 40 and 1.5 < chance < 1.8
