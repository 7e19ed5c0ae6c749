import pytest

from loqi_core import load_dataset
from loqi_core.plugin import ProtocolMismatchWarning
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


class TestTokyo247(DatasetTests):
    dataset = "tokyo247"

    def make(self, root):
        return write_vpr_folder(root / "tokyo247", places=4, queries_per_place=2)


def test_counts_are_checked_against_the_protocol(tmp_path):
    write_vpr_folder(tmp_path / "tokyo247", places=3, queries_per_place=2)
    with pytest.warns(ProtocolMismatchWarning, match="expected 75984, found 3; queries: expected 315, found 6"):
        test = load_dataset("tokyo247", "test", root=tmp_path)
    assert [len(g) for g in test.ground_truth(25.0)] == [1] * 6
    assert test.database.sequences is None and test.queries.sequences is None
