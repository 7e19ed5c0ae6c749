"""The folder dataset: gmberton's layout read back with positives, sequences, places, and every bad-file error."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core.data import images as data_module
from loqi_core.data.datasets import ProtocolMismatchWarning, load_dataset
from loqi_core.data.folders import group_places, quick_check, read_train_folder
from loqi_core.data.sets import ImageList, write_skipped
from loqi_core.errors import DataError
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


def _png(path: Path, value: int = 128, size=(16, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class TestFolderDataset(DatasetTests):
    dataset = "folder"

    def make(self, root: Path) -> Path:
        write_vpr_folder(root / "ds", places=6)
        for i in range(4):  # a training split: two places of two images each
            _png(root / "ds/images/train/database" / f"@{500000 + (i // 2) * 100 + i % 2:.2f}@4000000.00@@@@@{i}@.png", i)
        return root / "ds"


def test_positives_match_the_places(tmp_path):
    write_vpr_folder(tmp_path, places=8)
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert len(test.database) == 8 and len(test.queries) == 8
    gt = test.ground_truth(25.0)
    # queries sit within 5 m of their place and places are 100 m apart: exactly one positive each, the same place
    for q, pos in enumerate(gt):
        assert pos.tolist() == [int(test.queries.paths[q].name.split("@")[9].split("_")[0])]
    assert all(len(p) == 0 for p in test.ground_truth(0.01))
    assert all(len(p) == 3 for p in test.ground_truth(150.0)[1:-1])


def test_flat_database_queries_layout(tmp_path):
    _png(tmp_path / "database/@10@20@.png")
    _png(tmp_path / "queries/@12@20@.png")
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert test.ground_truth(5.0)[0].tolist() == [0]


@pytest.mark.parametrize(
    "name",
    ["@@20@.png", "no_at_signs.png", "@east@north@.png", "@nan@1@.png", "@5@@.png"],
)
def test_name_without_coordinates_names_the_file(tmp_path, name):
    write_vpr_folder(tmp_path, places=3)
    _png(tmp_path / "images/test/queries" / name)
    with pytest.raises(DataError, match="UTM coordinates") as info:
        load_dataset(f"folder:{tmp_path}", "test")
    assert name in str(info.value)


def test_skip_bad_counts_and_lists(tmp_path):
    write_vpr_folder(tmp_path, places=3)
    bad_name = _png(tmp_path / "images/test/queries/bad.png")
    truncated = tmp_path / "images/test/database/@1@2@.jpg"
    truncated.write_bytes(_jpeg_bytes()[:300])
    test = load_dataset(f"folder:{tmp_path}", "test", params={"skip_bad": True})
    assert len(test.database) == 3 and len(test.queries) == 3
    assert sorted(s.split(":")[0] for s in test.skipped) == sorted([str(truncated), str(bad_name)])
    assert any("skipped 2 bad file(s)" in n for n in test.notes)
    out = write_skipped(test, tmp_path / "run")
    assert out is not None and out.read_text().count("\n") == 2 and str(truncated) in out.read_text()


def test_nothing_skipped_writes_nothing(tmp_path):
    write_vpr_folder(tmp_path, places=2)
    assert write_skipped(load_dataset(f"folder:{tmp_path}", "test"), tmp_path / "run") is None


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (lambda: _jpeg_bytes()[:200], "truncated JPEG"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_unreadable_or_truncated_image_names_the_file(tmp_path, content, reason):
    write_vpr_folder(tmp_path, places=3)
    bad = tmp_path / "images/test/database/@500000.00@4000000.00@33@T@@@@@x@.jpg"
    bad.write_bytes(content() if callable(content) else content)
    with pytest.raises(DataError, match=reason) as info:
        load_dataset(f"folder:{tmp_path}", "test")
    assert str(bad) in str(info.value)


def test_truncated_png_is_caught_without_decoding(tmp_path):
    good = _png(tmp_path / "a.png")
    cut = tmp_path / "b.png"
    cut.write_bytes(good.read_bytes()[:-30])
    assert quick_check(good) is None
    assert "truncated PNG" in quick_check(cut)


def test_full_check_decodes_what_the_quick_check_lets_through(tmp_path):
    write_vpr_folder(tmp_path, places=3)
    path = tmp_path / "images/test/database/@0@0@.png"
    raw = bytearray(_png(tmp_path / "src.png").read_bytes())
    raw[60:80] = bytes(20)  # corrupt the image data; the IEND trailer is still there
    path.write_bytes(bytes(raw))
    (tmp_path / "src.png").unlink()
    assert quick_check(path) is None
    with pytest.raises(DataError, match=str(path).replace("@", "@")):
        load_dataset(f"folder:{tmp_path}", "test", params={"check": "full"})
    test = load_dataset(f"folder:{tmp_path}", "test", params={"check": "full", "skip_bad": True})
    assert len(test.database) == 3 and test.skipped[0].startswith(str(path))


def test_read_image_names_a_truncated_file(tmp_path):
    path = tmp_path / "t.png"
    path.write_bytes(_png(tmp_path / "s.png").read_bytes()[:70])
    with pytest.raises(DataError, match="t.png"):
        data_module.read_image(path)


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "images/test/database").mkdir(parents=True)
    (tmp_path / "images/test/queries").mkdir(parents=True)
    with pytest.raises(DataError, match="no images") as info:
        load_dataset(f"folder:{tmp_path}", "test")
    assert str(tmp_path / "images/test/database") in str(info.value)
    with pytest.raises(DataError, match="expected images/test/database"):
        load_dataset(f"folder:{tmp_path / 'images'}", "test")
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}", "test")


def test_sequence_order_by_frame_name_and_timestamp(tmp_path):
    frames = [3, 10, 1, 2]
    for f in frames:
        _png(tmp_path / "images/test/database/runA" / f"@0@{f * 2.4:.1f}@@@@@{f}@@@@@@@@.png", f)
        _png(tmp_path / "images/test/queries" / f"@0@{f * 2.4:.1f}@@@@@{f}@@@@@2020010{f % 10}_1200{f:02d}@@.png", f)
    _png(tmp_path / "images/test/database/runB" / "@0@500@@@@@7@@@@@@@@.png", 7)
    test = load_dataset(f"folder:{tmp_path}", "test", params={"order": "frame"})
    db = test.database
    runs = [[int(db.paths[i].name.split("@")[7]) for i in run] for run in db.sequences]
    assert runs == [[1, 2, 3, 10], [7]]
    by_name = load_dataset(f"folder:{tmp_path}", "test", params={"order": "name"})
    assert [by_name.database.paths[i].name.split("@")[2] for i in by_name.database.sequences[0]] == ["2.4", "4.8", "7.2", "24.0"]  # natural order
    with pytest.raises(DataError, match="no timestamp in field 13"):  # the database names carry none
        load_dataset(f"folder:{tmp_path}", "test", params={"order": "timestamp"})
    timed = tmp_path / "timed"
    for f in frames:
        stamp = f"2020010{f % 10}_1200{f:02d}"  # frame 10 was taken first (day 0)
        for split in ("database", "queries"):
            _png(timed / split / f"@0@{f}@@@@@{f}@@@@@@{stamp}@@.png", f)
    q = load_dataset(f"folder:{timed}", "test", params={"order": "timestamp"}).queries
    assert [int(q.paths[i].name.split("@")[7]) for i in q.sequences[0]] == [10, 1, 2, 3]
    assert load_dataset(f"folder:{tmp_path}", "test").database.sequences is None


def test_frame_order_needs_frame_indices(tmp_path):
    write_vpr_folder(tmp_path, places=2)
    _png(tmp_path / "images/test/database/@1@1@@@@@notanumber@.png")
    with pytest.raises(DataError, match="frame index"):
        load_dataset(f"folder:{tmp_path}", "test", params={"order": "frame"})


def test_train_places_from_positions(tmp_path):
    for i, (e, n) in enumerate([(0, 0), (3, 0), (500, 0), (502, 1), (0, 4), (1000, 1000)]):
        _png(tmp_path / f"@{e}@{n}@{i}@.png", i)
    train = load_dataset(f"folder:{tmp_path}", "train")
    assert train.images.positions is not None
    original = [int(p.name.split("@")[3]) for p in train.images.paths]
    places = sorted(sorted(original[i] for i in v) for v in train.places().values())
    assert places == [[0, 1, 4], [2, 3], [5]]
    tight = load_dataset(f"folder:{tmp_path}", "train", params={"place_radius_m": 3.5})
    assert len(tight.places()) == 4


def test_train_label_free_plain_folder(tmp_path):
    for i in range(3):
        _png(tmp_path / "clips" / f"frame_{i:04d}.png", i)
    train = load_dataset(f"folder:{tmp_path}", "train")
    assert len(train.images) == 3 and train.place_ids is None and train.images.positions is None
    with pytest.raises(DataError, match="no places"):
        train.places()


def test_train_mixed_names_is_an_error_unless_asked(tmp_path):
    _png(tmp_path / "@0@0@.png")
    plain = _png(tmp_path / "plain.png")
    with pytest.raises(DataError, match="plain.png"):
        load_dataset(f"folder:{tmp_path}", "train")
    assert load_dataset(f"folder:{tmp_path}", "train", params={"labels": "none"}).place_ids is None
    skipping = load_dataset(f"folder:{tmp_path}", "train", params={"skip_bad": True})
    assert len(skipping.images) == 1 and skipping.skipped[0].startswith(str(plain))


def test_train_uses_the_train_split_and_refuses_to_train_on_test(tmp_path):
    write_vpr_folder(tmp_path, places=3)
    with pytest.raises(DataError, match="images/train"):
        load_dataset(f"folder:{tmp_path}", "train")
    _png(tmp_path / "images/train/database/@0@0@.png")
    _png(tmp_path / "images/train/queries/@1@0@.png")
    train = load_dataset(f"folder:{tmp_path}", "train")
    assert len(train.images) == 2 and len(train.places()) == 1


def test_train_folder_missing_is_named(tmp_path):
    with pytest.raises(DataError, match="gone"):
        read_train_folder(tmp_path / "gone")


def test_group_places_matches_brute_force_greedy():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 200, (400, 2))
    ids = group_places(pos, 12.0)
    expected = np.full(len(pos), -1)
    nxt = 0
    for i in range(len(pos)):
        if expected[i] < 0:
            near = (((pos - pos[i]) ** 2).sum(1) <= 144.0) & (expected < 0)
            expected[near] = nxt
            nxt += 1
    assert np.array_equal(ids, expected)


def test_groups_restrict_positives():
    from loqi_core.data.sets import TestSet

    db = ImageList(["a", "b", "c"], np.array([[0, 0], [0, 0], [100, 0]]))
    q = ImageList(["q1", "q2"], np.array([[1, 0], [1, 0]]))
    test = TestSet("t", db, q, database_groups=np.array([0, 1, 0]), query_groups=np.array([1, 0]))
    assert [g.tolist() for g in test.ground_truth(25.0)] == [[1], [0]]


def test_protocol_mismatch_warns_loudly_and_notes(tmp_path):
    from types import SimpleNamespace

    from loqi_core.data.folder_dataset import FolderTestParams
    from loqi_core.data.folders import read_test_folder
    from loqi_core.hooks.hookspecs import hookimpl
    from loqi_core.hooks.specs import DatasetSpec
    from loqi_core.testing import isolated_plugins

    @hookimpl
    def loqi_register_datasets(register):
        register(
            DatasetSpec(
                "proto",
                FolderTestParams,
                test=lambda p: read_test_folder(p.root, name="proto"),
                expected_counts={"database": 5, "queries": 3},
            )
        )

    write_vpr_folder(tmp_path, places=3)
    with isolated_plugins(("proto", SimpleNamespace(loqi_register_datasets=loqi_register_datasets)), entry_points=False):
        with pytest.warns(ProtocolMismatchWarning, match="database: expected 5, found 3"):
            test = load_dataset(f"proto:{tmp_path}", "test")
        assert any("PROTOCOL MISMATCH" in n for n in test.notes)
        for i in range(5):
            _png(tmp_path / "five/database" / f"@{i * 100}@0@.png", i)
            if i < 3:
                _png(tmp_path / "five/queries" / f"@{i * 100}@1@.png", i)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_dataset(f"proto:{tmp_path / 'five'}", "test")


def test_data_root_joins_the_name(tmp_path, monkeypatch):
    write_vpr_folder(tmp_path / "folder", places=2)
    monkeypatch.setenv("LOQI_DATA", str(tmp_path))
    assert len(load_dataset("folder", "test").database) == 2
    monkeypatch.delenv("LOQI_DATA")
    assert len(load_dataset("folder", "test", root=tmp_path).queries) == 2


def test_dataset_options_after_a_question_mark(tmp_path):
    write_vpr_folder(tmp_path, places=3)
    _png(tmp_path / "images/test/queries/bad.png")
    test = load_dataset(f"folder:{tmp_path}?skip_bad=true&check=full", "test")
    assert len(test.queries) == 3 and len(test.skipped) == 1
    with pytest.raises(Exception, match="no_such_option"):
        load_dataset(f"folder:{tmp_path}?no_such_option=1", "test")
    from loqi_core.data.datasets import split_options

    assert split_options("msls?split=val") == ("msls", {"split": "val"})
    assert split_options("folder:/data/what?") == ("folder:/data/what?", {})


def test_data_appended_after_the_image_is_not_called_truncated(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_bytes() + b"MOTION-PHOTO-TRAILER" * 200)  # 4 kB after the end-of-image marker
    assert quick_check(path) is None
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_jpeg_bytes()[:-400])
    assert "truncated JPEG" in quick_check(cut)
