import warnings

from loqi_core import load_dataset
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


class TestNycIndoor(DatasetTests):
    dataset = "nyc-indoor"

    def make(self, root):
        return write_vpr_folder(root / "nyc-indoor", places=3, queries_per_place=2)


def test_reads_back_without_protocol_warning(tmp_path):
    write_vpr_folder(tmp_path, places=3, queries_per_place=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = load_dataset(f"nyc-indoor:{tmp_path}", "test")
    assert [g.tolist() for g in test.ground_truth(25.0)] == [[0], [0], [1], [1], [2], [2]]
