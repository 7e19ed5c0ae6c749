"""loqi plugin nyc-indoor: the NYC-Indoor-VPR test set (paper's Table III) in gmberton's layout.

Keep this module free of torch imports.
"""

from __future__ import annotations

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

LAYOUT = """\
ROOT/images/test/database/@<east>@<north>@...@.jpg
ROOT/images/test/queries/@<east>@<north>@...@.jpg
east/north: the dataset's semi-automatic floor-plan annotation, in metres."""


def _test(params: FolderTestParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "nyc-indoor", {})


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "nyc-indoor",
            params=FolderTestParams,
            test=_test,
            description="NYC-Indoor-VPR: indoor scenes across New York City over a year (Table III)",
            source=(
                "Request NYC-Indoor-VPR from its authors (Sheng et al., ICRA 2024; ai4ce lab, NYU) and write the test "
                "split into the layout below. Expected counts UNVERIFIED, so none are checked (the recall values in "
                "the paper's Table III fit 1 933 queries, or a multiple)."
            ),
            license="UNVERIFIED (see the dataset's terms; faces and plates anonymised)",
            layout=LAYOUT,
        )
    )
