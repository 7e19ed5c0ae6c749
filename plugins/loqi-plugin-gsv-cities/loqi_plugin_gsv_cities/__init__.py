"""loqi plugin gsv-cities: the GSV-Cities training set (places × images from Google Street View).

The paper distils on the 12 cities stored at 300×400 for one pass. Images are grouped by ``place_id``
(made unique across cities), places with fewer than ``min_images_per_place`` images are dropped, and
lat/lon become UTM positions (for the triplet loss's distance-based negatives). Keep this module torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from loqi_core.plugin import DatasetSpec, Params, hookimpl

CITIES_300x400 = (
    "OSL", "Bangkok", "Osaka", "WashingtonDC", "TRT", "MexicoCity",
    "Medellin", "LosAngeles", "PRG", "Barcelona", "BuenosAires", "PRS",
)  # fmt: skip
"""Cities whose images are all 300×400 (the LoQI reference code's CITIES_300x400): the paper's training set."""
CITIES_480x640 = (
    "Boston", "Brussels", "Phoenix", "London", "Lisbon", "Melbourne",
    "Minneapolis", "Miami", "Rome", "Chicago", "Madrid",
)  # fmt: skip
"""The other 11 of GSV-Cities' 23 default cities (480×640, unused by the paper)."""

LAYOUT = """\
ROOT/Dataframes/<City>.csv      columns place_id,year,month,northdeg,city_id,lat,lon,panoid
ROOT/Images/<city_id>/<city_id>_<place_id:07d>_<yyyy>_<mm>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg
cities (default "300x400", the paper's): """ + ", ".join(CITIES_300x400)


class GSVCitiesParams(Params):
    root: Path | None = Field(None, description="the GSV-Cities folder (holding Dataframes/ and Images/)")
    cities: list[str] | Literal["300x400", "480x640", "all"] = Field(
        "300x400", description='city names, or "300x400" (the paper\'s 12), "480x640", "all" (every Dataframes/*.csv)'
    )
    min_images_per_place: int = Field(4, ge=1, description="drop places with fewer images (GSV-Cities' default 4)")
    skip_bad: bool = Field(False, description="leave out missing or unreadable images, listing them in the run directory")
    check: Literal["quick", "full", "none"] = Field(
        "quick", description="at load: quick = signature and end-marker check per file, full = decode all, none"
    )


def _train(params: GSVCitiesParams):
    from loqi_plugin_gsv_cities.reader import read_gsv_cities

    return read_gsv_cities(params)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "gsv-cities",
            params=GSVCitiesParams,
            train=_train,
            description="GSV-Cities: ~530k Street View images of ~62k places in 23 cities (training only)",
            source=(
                "Download GSV-Cities from Kaggle (dataset amaralibey/gsv-cities, about 23 GB; see "
                "github.com/amaralibey/gsv-cities). Cite Ali-bey, Chaib-draa and Giguere, 'GSV-Cities: Toward "
                "appropriate supervised visual place recognition', Neurocomputing 2022."
            ),
            license="no licence file in amaralibey/gsv-cities (UNVERIFIED); images from Google Street View, research use",
            layout=LAYOUT,
        )
    )
