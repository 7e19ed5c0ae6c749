"""loqi plugin nordland: the Nordland test set (summer database, winter queries) in gmberton's layout.

The frame index is field 7 of each name, so both database and queries come with sequence order (one train
ride each), which video degradations need. Keep this module free of torch imports.
"""

from __future__ import annotations

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

EXPECTED = {"test": {"database": 27592, "queries": 2760}}
"""The paper's Table I: every summer frame as database, every 10th winter frame as queries."""

LAYOUT = """\
ROOT/images/test/database/@0@<north>@@@@@<frame index>@@@@@@@@.jpg   27 592 summer frames
ROOT/images/test/queries/@0@<north>@@@@@<frame index>@@@@@@@@.jpg    2 760 winter frames (every 10th)
north = frame index x the downloader's spacing, so the 25 m radius is a fixed number of frames;
the frame index (field 7) gives the sequence order."""


def _test(params: FolderTestParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "nordland", EXPECTED, order="frame")


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "nordland",
            params=FolderTestParams,
            test=_test,
            description="Nordland: a 10-hour train ride, summer database vs winter queries, in frame order",
            source=(
                "Run download_nordland_subset.py from github.com/gmberton/VPR-datasets-downloader (every 10th winter "
                "frame as query: 27 592 / 2 760, the split the paper and MixVPR use). download_nordland.py keeps every "
                "winter frame (27 592 queries) and will be flagged as a protocol mismatch. Footage by NRK; cite "
                "Sunderhauf et al., ICRA 2013 workshop."
            ),
            license="CC BY 3.0 (NRK, Nordlandsbanen minute by minute)",
            layout=LAYOUT,
            expected_counts=EXPECTED["test"],
        )
    )
