import shutil

import pytest

from loqi_core import load_dataset
from loqi_core.plugin import ProtocolMismatchWarning
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


class TestMSLS(DatasetTests):
    dataset = "msls"

    def make(self, root):
        return write_vpr_folder(root / "msls", places=5)


def test_small_copy_is_flagged_as_protocol_mismatch(tmp_path):
    write_vpr_folder(tmp_path / "msls", places=4)
    with pytest.warns(ProtocolMismatchWarning, match="database: expected 18871, found 4; queries: expected 11084"):
        test = load_dataset("msls", "test", root=tmp_path)
    assert [g.tolist() for g in test.ground_truth(25.0)] == [[0], [1], [2], [3]]


def test_gmberton_folder_name_is_found_under_the_data_root(tmp_path):
    write_vpr_folder(tmp_path / "mapillary_sls", places=3)
    with pytest.warns(ProtocolMismatchWarning):
        test = load_dataset("msls", "test", root=tmp_path)
    assert "mapillary_sls" in str(test.database.paths[0])
    shutil.rmtree(tmp_path / "mapillary_sls")
    with pytest.raises(Exception, match="msls"):
        load_dataset("msls", "test", root=tmp_path)


def test_val_split_is_read_when_asked(tmp_path):
    write_vpr_folder(tmp_path / "val_only" / "x", places=2)
    (tmp_path / "val_only/x/images/test").rename(tmp_path / "val_only/x/images/val")
    with pytest.warns(ProtocolMismatchWarning):
        test = load_dataset(f"msls:{tmp_path / 'val_only/x'}", "test", params={"split": "val"})
    assert len(test.queries) == 2
