"""loqi plugin tokyo247: the Tokyo 24/7 test set (day, sunset and night queries) in gmberton's layout.

Keep this module free of torch imports.
"""

from __future__ import annotations

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

EXPECTED = {"test": {"database": 75984, "queries": 315}}
"""The paper's Table I."""

LAYOUT = """\
ROOT/images/test/database/@<utm_east>@<utm_north>@<zone>@<letter>@<lat>@<lon>@<pano_id>@<tile>@...@.jpg   75 984
ROOT/images/test/queries/@<utm_east>@<utm_north>@...@.jpg                                                 315"""


def _test(params: FolderTestParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "tokyo247", EXPECTED)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "tokyo247",
            params=FolderTestParams,
            test=_test,
            description="Tokyo 24/7: Shibuya street views; phone queries at day, sunset and night",
            source=(
                "Ask the authors (Torii et al., TPAMI 2018) for the database; put it under tokyo247/raw_data and run "
                "format_tokyo247.py from github.com/gmberton/VPR-datasets-downloader (it fetches the queries itself)."
            ),
            license="research use, by permission of the authors (UNVERIFIED: no licence file found)",
            layout=LAYOUT,
            expected_counts=EXPECTED["test"],
        )
    )
