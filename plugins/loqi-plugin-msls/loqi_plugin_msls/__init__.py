"""loqi plugin msls: the Mapillary Street-Level Sequences test set, read from gmberton's layout.

Keep this module free of torch imports: it is imported by ``loqi plugins``.
"""

from __future__ import annotations

from pathlib import Path

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

EXPECTED = {"test": {"database": 18871, "queries": 11084}, "val": {"database": 18871, "queries": 11084}}
"""The paper's Table I: gmberton's formatting of MSLS val (cph + sf merged, panoramas dropped, all queries)."""

LAYOUT = """\
ROOT/images/test/database/@<utm_east>@<utm_north>@<zone>@<letter>@<lat>@<lon>@<key>@...@.jpg   18 871 images
ROOT/images/test/queries/@...@.jpg                                                          11 084 images
(format_mapillary.py writes images/val and links images/test to it; ROOT may also be named mapillary_sls)"""


def _root(params: FolderTestParams) -> Path | None:
    """``--data-root`` gives DATA/msls; gmberton's script names the folder mapillary_sls, so accept that too."""
    root = params.root
    if root is not None and not Path(root).exists() and (Path(root).parent / "mapillary_sls").is_dir():
        return Path(root).parent / "mapillary_sls"
    return root


def _test(params: FolderTestParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "msls", EXPECTED, root=_root(params))


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "msls",
            params=FolderTestParams,
            test=_test,
            description="Mapillary SLS (val as test): street views from 30 cities, seasons and day/night",
            source=(
                "Log in at https://www.mapillary.com/dataset/places, download and unzip the MSLS archives, then run "
                "format_mapillary.py from github.com/gmberton/VPR-datasets-downloader. Cite Warburg et al., CVPR 2020. "
                "Note: GSV-Cities/MixVPR report MSLS-val with 740 queries; this protocol keeps all 11 084."
            ),
            license="CC BY-NC-SA 4.0 (Mapillary Street-Level Sequences terms; UNVERIFIED here, check them when you download)",
            layout=LAYOUT,
            expected_counts=EXPECTED["test"],
        )
    )
