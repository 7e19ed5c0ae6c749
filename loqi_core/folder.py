"""The ``folder`` dataset: any folder in gmberton's VPR-datasets-downloader layout, or plain images.

Test set: ``ROOT/images/test/{database,queries}/@east@north@...@.jpg`` (UTM east/north are fields 1, 2).
Training set: any folder of images; ``@east@north@`` names give places (images within ``place_radius_m``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from loqi_core.hookspecs import hookimpl
from loqi_core.specs import DatasetSpec, Params

LAYOUT = """\
ROOT/images/test/database/@<utm_east>@<utm_north>@<zone>@<letter>@<lat>@<lon>@...@.jpg
ROOT/images/test/queries/@<utm_east>@<utm_north>@...@.jpg
(a test set may also be given as ROOT/database and ROOT/queries; training: any folder of images)"""


class FolderParams(Params):
    root: Path | None = Field(None, description="dataset folder (given as folder:PATH)")
    split: str = Field("test", description="which split under images/ to read as the test set")
    skip_bad: bool = Field(False, description="skip unreadable images and badly named files, listing them")
    place_radius_m: float = Field(10.0, gt=0, description="training: images this close form one place")


def _test(params: FolderParams):
    from loqi_core.folder_reader import read_test_folder

    return read_test_folder(params)


def _train(params: FolderParams):
    from loqi_core.folder_reader import read_train_folder

    return read_train_folder(params)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "folder",
            params=FolderParams,
            test=_test,
            train=_train,
            description="Your own data: gmberton's @east@north@ layout, or any folder of images for training",
            source="Your files. gmberton/VPR-datasets-downloader formats many public datasets into this layout.",
            layout=LAYOUT,
        )
    )
