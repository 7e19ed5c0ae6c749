import warnings

import pytest

from loqi_core import load_dataset
from loqi_core.plugin import ProtocolMismatchWarning
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


class TestTumLsi(DatasetTests):
    dataset = "tum-lsi"

    def make(self, root):
        return write_vpr_folder(root / "tum-lsi", places=4)


def test_only_the_query_count_is_checked(tmp_path):
    write_vpr_folder(tmp_path / "a", places=3)
    with pytest.warns(ProtocolMismatchWarning, match="queries: expected 220, found 3") as record:
        load_dataset(f"tum-lsi:{tmp_path / 'a'}", "test")
    assert "database" not in str(record[0].message).split("(")[1]
    write_vpr_folder(tmp_path / "b", places=220)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(f"tum-lsi:{tmp_path / 'b'}", "test").queries) == 220
