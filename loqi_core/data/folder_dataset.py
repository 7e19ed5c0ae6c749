"""The ``folder`` dataset: any folder in gmberton's VPR-datasets-downloader layout, or plain images.

Test set: ``ROOT/images/test/{database,queries}/@east@north@...@.jpg`` (UTM east/north are fields 1, 2); plain
names give a label-free test set (predictions and retrieval pairs, no recall).
Training set: ``ROOT/images/train/`` in that layout, or any folder of images; ``@east@north@`` names give
places (images within ``place_radius_m``), plain names give a label-free set (for ickd and mse).

The params models here are shared by the dataset plugins that read this layout (msls, nordland, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.hooks.specs import DatasetSpec, Params

LAYOUT = """\
ROOT/images/test/database/@<utm_east>@<utm_north>@<zone>@<letter>@<lat>@<lon>@<pano_id>@...@.jpg
ROOT/images/test/queries/@<utm_east>@<utm_north>@...@.jpg
  (also accepted: ROOT/database/ and ROOT/queries/; subfolders are read recursively; names without
  @east@north@ give a label-free test set: predictions, grids and pairs, no recall)
Training (--train folder:PATH): ROOT/images/train/ in the same layout, or any folder of images;
  names with @east@north@ form places (images within place_radius_m), other names train label-free."""


class FolderTestParams(Params):
    """What every reader of the gmberton layout accepts."""

    root: Path | None = Field(None, description="dataset folder (NAME:PATH, or --data-root/$LOQI_DATA + NAME)")
    split: str = Field("test", description="which split under images/ to read as the test set")
    skip_bad: bool = Field(False, description="leave out unreadable or badly named files, listing them in the run directory")
    check: Literal["quick", "full", "none"] = Field(
        "quick", description="at load: quick = signature and end-marker check per file, full = decode all, none"
    )
    shuffle_seed: int | None = Field(
        None, ge=0, description="list database and queries in this seed's random order, not by name: it changes which "
        "images share an extraction batch, which only batch-dependent methods notice (CricaVPR's cross-image attention; "
        "the LoQI-VPR authors' batches came from Python's hash-randomised set() order)"
    )


class FolderParams(FolderTestParams):
    order: Literal["none", "name", "frame", "timestamp"] = Field(
        "none",
        description="sequence order per subfolder (for video degradations): file name, frame index (field 7) or timestamp (field 13)",
    )
    train_split: str = Field("train", description="training: the split under images/ (when the folder has images/)")
    labels: Literal["auto", "positions", "none"] = Field(
        "auto", description="positions from @east@north@ names (training: places), none (label-free: training with "
        "ickd/mse, evaluation without recall), or auto (whichever the names allow)"
    )
    place_radius_m: float = Field(10.0, gt=0, description="training: images this close form one place")


def _test(params: FolderParams):
    from loqi_core.data.folders import read_test_folder

    return read_test_folder(
        params.root, split=params.split, labels=params.labels, skip_bad=params.skip_bad, validate=params.check,
        order=params.order, shuffle_seed=params.shuffle_seed,
    )


def _train(params: FolderParams):
    from loqi_core.data.folders import read_train_folder

    return read_train_folder(
        params.root,
        split=params.train_split,
        labels=params.labels,
        place_radius_m=params.place_radius_m,
        skip_bad=params.skip_bad,
        validate=params.check,
    )


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "folder",
            params=FolderParams,
            test=_test,
            train=_train,
            description="Your own data: gmberton's @east@north@ layout, or any folder of images for training",
            source=(
                "Your files. gmberton/VPR-datasets-downloader formats many public datasets into this layout; "
                "a folder of frames without coordinates serves as a label-free training set."
            ),
            license="yours",
            layout=LAYOUT,
        )
    )
