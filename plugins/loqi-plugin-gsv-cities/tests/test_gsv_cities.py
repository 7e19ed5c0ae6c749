import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core import load_dataset
from loqi_core.plugin import DataError
from loqi_core.testing import DatasetTests
from loqi_plugin_gsv_cities import CITIES_300x400
from loqi_plugin_gsv_cities.reader import image_name
from loqi_plugin_gsv_cities.utm import from_latlon, to_positions, zone_number

# city -> [(place_id, images, lat, lon)]
CITIES = {
    "OSL": [(0, 4, 59.9139, 10.7522), (1, 5, 59.9200, 10.7600), (2, 2, 59.9300, 10.7700)],
    "PRG": [(0, 4, 50.0755, 14.4378), (7, 4, 50.0800, 14.4500)],
}


def write_gsv(root: Path, cities=CITIES, lat_format=repr) -> Path:
    """GSV-Cities' exact layout: Dataframes/<City>.csv and Images/<city_id>/<name>.jpg."""
    rng = np.random.default_rng(0)
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    for city, places in cities.items():
        (root / "Images" / city).mkdir(parents=True, exist_ok=True)
        with open(root / "Dataframes" / f"{city}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
            for place, n, lat, lon in places:
                for k in range(n):
                    la, lo = lat + k * 1e-5, lon - k * 1e-5
                    pano = f"pano_{place}-{k}_x"  # real panoids contain '_' and '-'
                    w.writerow([place, 2015 + k, k + 1, 90 * k, city, la, lo, pano])
                    name = image_name(city, place, 2015 + k, k + 1, 90 * k, lat_format(la), lat_format(lo), pano)
                    Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).save(root / "Images" / city / name)
    return root


class TestGSVCities(DatasetTests):
    dataset = "gsv-cities"
    params = {"cities": ["OSL", "PRG"]}

    def make(self, root):
        return write_gsv(root / "gsv")


def _load(root, **params):
    return load_dataset(f"gsv-cities:{root}", "train", params={"cities": ["OSL", "PRG"], **params})


def test_places_filtered_and_unique_across_cities(tmp_path):
    train = _load(write_gsv(tmp_path))
    places = train.places()
    # OSL place 2 has only 2 images (< 4): dropped; place 0 exists in both cities but stays two places
    assert sorted(len(v) for v in places.values()) == [4, 4, 4, 5]
    assert sorted(places) == [0, 1, 100000, 100007]
    for pid, idx in places.items():
        city = "OSL" if pid < 100000 else "PRG"
        assert all(train.images.paths[i].name.startswith(f"{city}_{pid % 100000:07d}_") for i in idx)
    assert any("1 place(s) with fewer than 4" in n for n in train.notes)
    assert len(_load(tmp_path, min_images_per_place=2).places()) == 5


def test_positions_are_utm_metres(tmp_path):
    train = _load(write_gsv(tmp_path))
    first = train.images.paths.index(next(p for p in train.images.paths if p.name.startswith("OSL_0000000_2015")))
    e, n, zone, _ = from_latlon(59.9139, 10.7522)
    assert np.allclose(train.images.positions[first], [zone * 1e6 + e, n], atol=1e-6)
    for idx in train.places().values():  # images of one place are metres apart, places hundreds of metres
        pos = train.images.positions[idx]
        assert np.linalg.norm(pos - pos[0], axis=1).max() < 10


def test_names_are_matched_when_the_csv_prints_coordinates_differently(tmp_path):
    write_gsv(tmp_path, lat_format=lambda x: f"{x:.9f}")
    assert len(_load(tmp_path).images) == 17


def test_default_is_the_papers_twelve_cities(tmp_path):
    write_gsv(tmp_path)
    assert len(CITIES_300x400) == 12 and {"OSL", "PRG"} <= set(CITIES_300x400)
    with pytest.raises(DataError, match="Bangkok.csv not found .*OSL, PRG"):
        load_dataset(f"gsv-cities:{tmp_path}", "train")
    assert len(load_dataset(f"gsv-cities:{tmp_path}", "train", params={"cities": "all"}).places()) == 4
    assert len(_load(tmp_path, cities=["PRG"]).places()) == 2


def test_missing_image_is_named_or_skipped(tmp_path):
    write_gsv(tmp_path)
    gone = next((tmp_path / "Images/PRG").glob("PRG_0000007_2016*"))
    gone.unlink()
    with pytest.raises(DataError, match="not found") as info:
        _load(tmp_path)
    assert "PRG_0000007_2016" in str(info.value)
    train = _load(tmp_path, skip_bad=True)
    assert len(train.skipped) == 1 and "PRG_0000007_2016" in train.skipped[0]
    assert sorted(train.places()) == [0, 1, 100000]  # PRG place 7 fell below 4 images


def test_truncated_image_is_named(tmp_path):
    write_gsv(tmp_path)
    victim = next((tmp_path / "Images/OSL").glob("OSL_0000001_*"))
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(DataError) as info:
        _load(tmp_path)
    assert str(victim) in str(info.value)
    assert _load(tmp_path, skip_bad=True).skipped[0].startswith(str(victim))


def test_bad_csv_is_named(tmp_path):
    write_gsv(tmp_path)
    (tmp_path / "Dataframes/PRG.csv").write_text("place_id,year,lat\n1,2020,3.0\n")
    with pytest.raises(DataError, match=r"PRG.csv: missing column\(s\) month, northdeg, city_id, lon, panoid"):
        _load(tmp_path)
    (tmp_path / "Dataframes/PRG.csv").write_text("place_id,year,month,northdeg,city_id,lat,lon,panoid\nx,2020,1,0,PRG,1,2,p\n")
    with pytest.raises(DataError, match="PRG.csv, line 2"):
        _load(tmp_path)


# Reference values: utm.from_latlon (the PyPI "utm" package, which the LoQI code uses); the first is the
# example in that package's README.
KNOWN = [
    (51.2, 7.5, 395201.31038112973, 5673135.241182375, 32, "U"),
    (59.9139, 10.7522, 597979.9028830325, 6643118.992212711, 32, "V"),
    (-34.6037, -58.3816, 373317.5022541708, 6170036.171263402, 21, "H"),
    (13.7563, 100.5018, 662366.5977826486, 1521280.6550470374, 47, "P"),
    (38.9072, -77.0369, 323383.1542472044, 4308450.758352301, 18, "S"),
    (60.5, 4.5, 252928.5321748784, 6715548.234449377, 32, "V"),  # Norway exception
    (78.2, 15.6, 513696.9454171085, 8680760.053991035, 33, "X"),  # Svalbard exception
    (-33.8688, 151.2093, 334368.63364640076, 6250948.345360274, 56, "H"),
    (0.0, 3.0, 500000.0, 0.0, 31, "N"),
]


@pytest.mark.parametrize("lat, lon, east, north, zone, letter", KNOWN)
def test_utm_matches_known_values(lat, lon, east, north, zone, letter):
    e, n, z, l = from_latlon(lat, lon)
    assert (z, l) == (zone, letter)
    assert abs(e - east) < 0.005 and abs(n - north) < 0.005


def test_utm_scale_and_range():
    # along the central meridian, 1 km of northing is 1 km x 0.9996 of geodesic distance (roughly 0.009 deg)
    e1, n1, _, _ = from_latlon(45.0, 9.0)
    e2, n2, _, _ = from_latlon(45.01, 9.0)
    assert e1 == pytest.approx(500000.0, abs=1e-6) and e2 == pytest.approx(500000.0, abs=1e-6)
    assert n2 - n1 == pytest.approx(1111.4 * 0.9996, rel=2e-3)
    assert zone_number(10.0, 180.0) == 1 and zone_number(10.0, -180.0) == 1
    with pytest.raises(DataError, match="latitude 85"):
        from_latlon(85.0, 0.0)
    pos = to_positions(np.array([51.2, 51.2]), np.array([7.5, 5.9]))  # zones 32 and 31
    assert pos[0, 0] == pytest.approx(32e6 + 395201.31038, abs=0.01) and pos[1, 0] < 32e6
