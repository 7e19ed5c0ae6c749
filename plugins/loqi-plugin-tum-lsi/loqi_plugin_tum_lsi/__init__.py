"""loqi plugin tum-lsi: the TUM LSI indoor test set (paper's Table III) in gmberton's layout.

Keep this module free of torch imports.
"""

from __future__ import annotations

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

EXPECTED = {"test": {"queries": 220}}
"""220 test images in TUM LSI (Walch et al., ICCV 2017); every recall value of the paper's Table III is a
multiple of 1/220. The database size (the 875 training images?) is UNVERIFIED and not checked."""

LAYOUT = """\
ROOT/images/test/database/@<east>@<north>@...@.jpg   the mapping images (metres in the building's frame)
ROOT/images/test/queries/@<east>@<north>@...@.jpg    220 test images
No downloader script exists: convert the released poses to this layout (east, north = the floor-plan x, y)."""


def _test(params: FolderTestParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "tum-lsi", EXPECTED)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "tum-lsi",
            params=FolderTestParams,
            test=_test,
            description="TUM LSI: large-scale indoor localisation in a university building (indoor, Table III)",
            source=(
                "Download TUM LSI from the TUM Computer Vision group (Walch et al., 'Image-based localization using "
                "LSTMs for structured feature correlation', ICCV 2017) and write its images into the layout below "
                "with their x, y positions. Expected: 220 queries; database size UNVERIFIED."
            ),
            license="UNVERIFIED (see the dataset's page; research use)",
            layout=LAYOUT,
            expected_counts=EXPECTED["test"],
        )
    )
