"""loqi plugin pitts: Pitts30k and Pitts250k (test sets and training sets) in gmberton's layout.

The paper trains NetVLAD on Pitts250k for its resolution and video experiments. Training places come from
positions: images within ``place_radius_m`` (default 10 m, the usual training positive radius) form a place.
Keep this module free of torch imports.
"""

from __future__ import annotations

from pydantic import Field

from loqi_core.plugin import DatasetSpec, FolderTestParams, hookimpl

# (database, queries) per split, from the NetVLAD paper (Arandjelovic et al., CVPR 2016) as reported by the
# benchmark of Berton et al. (CVPR 2022). The test splits are the commonly quoted ones; train/val UNVERIFIED.
EXPECTED = {
    "pitts30k": {
        "train": {"database": 10000, "queries": 7416},
        "val": {"database": 10000, "queries": 7608},
        "test": {"database": 10000, "queries": 6816},
    },
    "pitts250k": {
        "train": {"database": 91464, "queries": 7824},
        "val": {"database": 78648, "queries": 7608},
        "test": {"database": 83952, "queries": 8280},
    },
}

LAYOUT = """\
ROOT/images/{{train,val,test}}/database/@<utm_east>@<utm_north>@<zone>@<letter>@<lat>@<lon>@<pano_id>@<tile>@...@.jpg
ROOT/images/{{train,val,test}}/queries/@...@.jpg
expected (database / queries): {counts}
Training (--train {name}): images/train/database and images/train/queries, places within place_radius_m."""


class PittsParams(FolderTestParams):
    train_split: str = Field("train", description="training: the split under images/ to train on")
    place_radius_m: float = Field(10.0, gt=0, description="training: images this close form one place")


def _counts(name: str) -> str:
    return "; ".join(f"{s} {c['database']} / {c['queries']}" for s, c in EXPECTED[name].items())


def _make(name: str):
    def test(params: PittsParams):
        from loqi_core.plugin import read_protocol_test_set

        return read_protocol_test_set(params, name, EXPECTED[name])

    def train(params: PittsParams):
        from loqi_core.plugin import read_train_folder

        return read_train_folder(
            params.root,
            name=name,
            split=params.train_split,
            labels="positions",
            place_radius_m=params.place_radius_m,
            skip_bad=params.skip_bad,
            validate=params.check,
        )

    return test, train


@hookimpl
def loqi_register_datasets(register):
    for name, size in (("pitts30k", "30k"), ("pitts250k", "250k")):
        test, train = _make(name)
        register(
            DatasetSpec(
                name,
                params=PittsParams,
                test=test,
                train=train,
                description=f"Pittsburgh {size}: Google Street View of Pittsburgh (test set, and training set)",
                source=(
                    "Ask the authors (Torii et al., TPAMI 2015; see github.com/Relja/netvlad issue 42) for Pittsburgh "
                    f"250k and the dataset specifications, put them under {name}/raw_data and run format_{name}.py "
                    "from github.com/gmberton/VPR-datasets-downloader. Expected counts: test split from the NetVLAD "
                    "paper; train and val UNVERIFIED."
                ),
                license="research use, by permission of the authors (UNVERIFIED: no licence file found)",
                layout=LAYOUT.format(counts=_counts(name), name=name),
                expected_counts=EXPECTED[name]["test"],
            )
        )
