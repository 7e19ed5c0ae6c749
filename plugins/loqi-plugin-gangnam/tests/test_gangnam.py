import warnings

from loqi_core import load_dataset
from loqi_core.testing import DatasetTests
from loqi_core.testing.tiny import write_vpr_folder


class TestGangnam(DatasetTests):
    dataset = "gangnam"

    def make(self, root):
        return write_vpr_folder(root / "gangnam", places=3)


def test_floor_release_folders(tmp_path):
    write_vpr_folder(tmp_path / "B1/release", places=3)
    write_vpr_folder(tmp_path / "B2/release", places=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no published counts to check against
        assert len(load_dataset(f"gangnam:{tmp_path}", "test").database) == 3
        assert len(load_dataset(f"gangnam:{tmp_path}", "test", params={"floor": "B2"}).database) == 5
