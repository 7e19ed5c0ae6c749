"""Reading GSV-Cities from disk: one CSV per city, one folder of images per city."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from loqi_core.plugin import SKIP_HINT, DataError, ImageList, TrainSet, validate_files
from loqi_plugin_gsv_cities import CITIES_300x400, CITIES_480x640, GSVCitiesParams
from loqi_plugin_gsv_cities.utm import to_positions

COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
PLACE_STRIDE = 10**5
"""place_id + city index × 10⁵, as GSV-Cities' own loader does, keeps places of different cities apart."""


def image_name(city: str, place_id: int, year: int, month: int, northdeg: int, lat: str, lon: str, panoid: str) -> str:
    """The file name GSV-Cities gives an image (lat/lon as Python prints the float, like pandas' str())."""
    return f"{city}_{place_id:07d}_{year:04d}_{month:02d}_{northdeg:03d}_{lat}_{lon}_{panoid}.jpg"


def _key(name: str) -> tuple[str, ...] | None:
    """(place_id, year, month, northdeg, panoid) of a file name; panoids may contain underscores."""
    parts = name[: -len(".jpg")].split("_", 7) if name.endswith(".jpg") else []
    return (parts[1].lstrip("0") or "0", parts[2], parts[3], parts[4], parts[7]) if len(parts) == 8 else None


def select_cities(root: Path, cities) -> list[str]:
    if cities == "300x400":
        return list(CITIES_300x400)
    if cities == "480x640":
        return list(CITIES_480x640)
    if cities == "all":
        found = sorted(p.stem for p in (root / "Dataframes").glob("*.csv"))
        if not found:
            raise DataError(f"no city CSVs in {root / 'Dataframes'}")
        return found
    return list(cities)


def _read_city(root: Path, city: str, skip_bad: bool, skipped: list[str]):
    """Rows of one city's CSV matched to its image files: (paths, place ids, lats, lons)."""
    table = root / "Dataframes" / f"{city}.csv"
    if not table.is_file():
        have = sorted(p.stem for p in (root / "Dataframes").glob("*.csv"))
        raise DataError(f"{table} not found (cities present: {', '.join(have) or 'none'}); choose them with cities=[...]")
    paths, places, lats, lons = [], [], [], []
    listings: dict[str, tuple[set[str], dict[tuple, str]]] = {}
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            try:
                place, year, month = int(row["place_id"]), int(row["year"]), int(row["month"])
                northdeg = int(float(row["northdeg"]))
                lat, lon = float(row["lat"]), float(row["lon"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{table}, line {line}: {exc}") from None
            city_id = row["city_id"]
            if city_id not in listings:
                folder = root / "Images" / city_id
                if not folder.is_dir():
                    raise DataError(f"{table}, line {line}: image folder {folder} not found")
                names = set(os.listdir(folder))
                listings[city_id] = (names, {k: n for n in names if (k := _key(n)) is not None})
            names, by_key = listings[city_id]
            name = image_name(city_id, place, year, month, northdeg, repr(lat), repr(lon), row["panoid"])
            if name not in names:  # lat/lon printed differently: match on the other fields
                name = by_key.get((str(place), f"{year:04d}", f"{month:02d}", f"{northdeg:03d}", row["panoid"]), "")
            if not name:
                path = root / "Images" / city_id / image_name(city_id, place, year, month, northdeg, row["lat"], row["lon"], row["panoid"])
                if not skip_bad:
                    raise DataError(f"{path}: image listed in {table} (line {line}) not found {SKIP_HINT}")
                skipped.append(f"{path}: not found (listed in {table.name}, line {line})")
                continue
            paths.append(root / "Images" / city_id / name)
            places.append(place)
            lats.append(lat)
            lons.append(lon)
    return paths, places, lats, lons


def read_gsv_cities(params: GSVCitiesParams) -> TrainSet:
    """The selected cities as one TrainSet: place ids unique across cities, UTM positions, small places dropped."""
    if params.root is None:
        raise DataError("gsv-cities needs its folder: --train gsv-cities:PATH, or --data-root / $LOQI_DATA")
    root = Path(params.root)
    if not (root / "Dataframes").is_dir():
        raise DataError(f"{root}: no Dataframes/ folder (expected GSV-Cities' Dataframes/ and Images/)")
    skipped: list[str] = []
    paths: list[Path] = []
    place_ids: list[int] = []
    cities: list[int] = []
    lats: list[float] = []
    lons: list[float] = []
    for index, city in enumerate(select_cities(root, params.cities)):
        p, pl, la, lo = _read_city(root, city, params.skip_bad, skipped)
        paths += p
        place_ids += [index * PLACE_STRIDE + x for x in pl]
        cities += [index] * len(p)
        lats += la
        lons += lo
    good = set(validate_files(paths, params.check, params.skip_bad, skipped))
    keep = np.array([p in good for p in paths], dtype=bool)
    ids = np.asarray(place_ids, dtype=np.int64)[keep]
    unique, counts = np.unique(ids, return_counts=True)
    keep_places = unique[counts >= params.min_images_per_place]
    mask = np.isin(ids, keep_places)
    kept_paths = [p for p, k in zip(paths, keep) if k]
    kept_paths = [p for p, m in zip(kept_paths, mask) if m]
    if not kept_paths:
        raise DataError(f"{root}: no place has {params.min_images_per_place} or more readable images")
    positions = to_positions(np.asarray(lats)[keep][mask], np.asarray(lons)[keep][mask])
    train = TrainSet("gsv-cities", ImageList(kept_paths, positions), ids[mask])
    train.groups = np.asarray(cities, dtype=np.int64)[keep][mask]  # the authors mine each city on its own
    train.skipped = skipped
    dropped = len(unique) - len(keep_places)
    if dropped:
        train.notes.append(f"gsv-cities: {dropped} place(s) with fewer than {params.min_images_per_place} images left out")
    if skipped:
        train.notes.append(f"gsv-cities: skipped {len(skipped)} bad file(s); the list is written to the run directory")
    return train
