"""loqi plugin demo: a tiny dataset of real photographs shipped inside the package, so loqi runs offline.

300 places of the Nordland railway (summer database, winter queries) as the test set and 600 other frames as
the training set, 64×32 grey frames, CC BY 3.0 by NRK. Keep this module free of torch imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

DATA = Path(__file__).parent / "data"
EXPECTED = {"test": {"database": 300, "queries": 300}}
"""Not a published protocol: it catches a broken installation that lost some of the bundled files."""

LAYOUT = """\
<package>/data/images/test/database/part{1,2,3}/@0.00@<10*frame>@@@@@<frame>@@@@@@@@.png   300 summer frames
<package>/data/images/test/queries/part{1,2,3}/...                                       300 winter frames
<package>/data/images/train/{summer,winter}/part{1,2,3}/...                              600 frames, other places
Same frame index = same place; positions (0, 10*frame) m, so a 25 m radius accepts +-2 frames.
Each part is one stretch of the line in frame order (a sequence for video degradations)."""


class DemoParams(FolderTestParams):
    root: Path | None = Field(DATA, description="the bundled data (give demo:PATH to read a copy elsewhere)")
    order: Literal["frame", "none"] = Field("frame", description="sequence order: by frame index, or none")
    place_radius_m: float = Field(
        15.0, gt=0, description="training: images this close form one place (15 m: two neighbouring frames x two seasons)"
    )


def _test(params: DemoParams):
    from loqi_core.plugin import read_protocol_test_set

    return read_protocol_test_set(params, "demo", EXPECTED, order=params.order)


def _train(params: DemoParams):
    from loqi_core.plugin import read_train_folder

    return read_train_folder(
        params.root,
        name="demo",
        labels="positions",
        place_radius_m=params.place_radius_m,
        skip_bad=params.skip_bad,
        validate=params.check,
    )


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "demo",
            params=DemoParams,
            test=_test,
            train=_train,
            description="Bundled: 300 Nordland places (summer db / winter queries) + 600 training frames, 64x32",
            source=(
                "Shipped inside loqi-plugin-demo (1.2 MB). Frames of the Nordland dataset by NRK ('Nordlandsbanen "
                "minute by minute, season by season', 2013), via the 64x32 copy in github.com/TimQuelch/seqslam. "
                "Good for pipeline checks and demos, not for judging accuracy: raw-pixel nearest neighbour "
                "(winter -> summer, grey, standardised) already reaches R@1 34%, chance is 1.6%."
            ),
            license="CC BY 3.0, credit NRK (https://creativecommons.org/licenses/by/3.0/)",
            layout=LAYOUT,
            expected_counts=EXPECTED["test"],
        )
    )
