"""loqi plugin gangnam: NAVER LABS Gangnam Station (indoor, paper's Table III) in gmberton's layout.

Keep this module free of torch imports.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

LAYOUT = """\
ROOT/<floor>/release/images/test/database/@<east>@<north>@...@.jpg   (the LoQI code reads B1/release)
ROOT/<floor>/release/images/test/queries/@<east>@<north>@...@.jpg
or ROOT/images/test/{database,queries}/ directly; east/north = metres in the station's map frame."""


class GangnamParams(FolderTestParams):
    floor: str = Field("B1", description="which floor's release folder to read (B1 or B2) when ROOT holds several")


def _test(params: GangnamParams):
    from loqi_core.plugin import read_protocol_test_set

    root = params.root
    if root is not None and (Path(root) / params.floor / "release").is_dir():
        root = Path(root) / params.floor / "release"
    return read_protocol_test_set(params, "gangnam", {}, root=root)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "gangnam",
            params=GangnamParams,
            test=_test,
            description="Gangnam Station (NAVER LABS): a crowded metro station, indoor (Table III)",
            source=(
                "Download from NAVER LABS Europe's large-scale localization datasets (Lee et al., CVPR 2021) and "
                "write the images with their map positions into the layout below. Expected counts UNVERIFIED, "
                "so none are checked (the recall values in the paper's Table III fit 2 620 queries, or a multiple)."
            ),
            license="CC BY-NC-SA 4.0 (NAVER LABS; UNVERIFIED, check the dataset's terms)",
            layout=LAYOUT,
        )
    )
