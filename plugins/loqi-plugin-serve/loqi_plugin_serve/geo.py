"""Positions a robot can use: latitude, longitude and UTM zone of each database image, from gmberton's file names.

gmberton's names are ``@utm_east@utm_north@utm_zone_number@utm_zone_letter@latitude@longitude@pano_id@...@.jpg``.
A name that carries latitude and longitude gives them as they are; one that carries UTM east/north and a zone
(in its name, or from ``--utm-zone`` for names that carry UTM only) gets them by the inverse transverse Mercator
projection on WGS 84 (Krüger's series to the third order of n: well under a millimetre inside a zone). The zone's
latitude band letter tells the hemisphere (C–M south, N–X north), as in the names.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from loqi_core.plugin import ConfigError

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
UTM_K0 = 0.9996
UTM_FALSE_EASTING = 500000.0
UTM_FALSE_NORTHING_SOUTH = 10000000.0
BANDS = "CDEFGHJKLMNPQRSTUVWX"
"""Latitude bands of 8° from 80° S (C) to 84° N (X, 12°), I and O left out; N and above are north."""
ZONE = re.compile(r"^([1-9]|[1-5][0-9]|60)([C-HJ-NP-X])$")


def parse_zone(text: str, what: str = "--utm-zone") -> tuple[int, str]:
    """``"33T"`` → (33, "T"): a zone number 1–60 and a latitude band letter; anything else is one clear error."""
    match = ZONE.match(text.strip().upper())
    if match is None:
        raise ConfigError(f'{what}: "{text}" is not a UTM zone: a number from 1 to 60 and a latitude band letter '
                          f"C–X without I and O (north from N), e.g. 33T or 56H")  # fmt: skip
    return int(match.group(1)), match.group(2)


def band(latitude: float) -> str:
    """The latitude band letter of ``latitude`` (degrees, 80° S to 84° N)."""
    return BANDS[min(len(BANDS) - 1, max(0, int(math.floor((latitude + 80) / 8))))]


def utm_to_latlon(east: float, north: float, zone: int, northern: bool) -> tuple[float, float]:
    """WGS 84 latitude and longitude in degrees of a UTM position (metres) in ``zone``."""
    n = WGS84_F / (2 - WGS84_F)
    big_a = WGS84_A / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96, n**2 / 48 + n**3 / 15, 17 * n**3 / 480)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3, 7 * n**2 / 3 - 8 * n**3 / 5, 56 * n**3 / 15)
    xi = (north - (0.0 if northern else UTM_FALSE_NORTHING_SOUTH)) / (UTM_K0 * big_a)
    eta = (east - UTM_FALSE_EASTING) / (UTM_K0 * big_a)
    xi_p = xi - sum(b * math.sin(2 * j * xi) * math.cosh(2 * j * eta) for j, b in enumerate(beta, 1))
    eta_p = eta - sum(b * math.cos(2 * j * xi) * math.sinh(2 * j * eta) for j, b in enumerate(beta, 1))
    chi = math.asin(math.sin(xi_p) / math.cosh(eta_p))
    latitude = chi + sum(d * math.sin(2 * j * chi) for j, d in enumerate(delta, 1))
    longitude = math.radians(6 * zone - 183) + math.atan2(math.sinh(eta_p), math.cos(xi_p))
    return math.degrees(latitude), (math.degrees(longitude) + 540) % 360 - 180


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def name_geo(name: str, default_zone: tuple[int, str] | None = None) -> tuple[float, float, float]:
    """(latitude, longitude, zone number) of one image from its file name, NaN for what it does not tell."""
    fields = Path(name).name.split("@")
    field = lambda i: fields[i] if i < len(fields) else ""  # noqa: E731
    zone: tuple[int, str] | None = None
    if field(3) or field(4):
        try:
            zone = parse_zone(field(3) + field(4), "name")
        except ConfigError:
            zone = None
    zone = zone or default_zone
    lat, lon = _number(field(5)), _number(field(6))
    if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
        return lat, lon, float(zone[0]) if zone else math.nan
    east, north = _number(field(1)), _number(field(2))
    if zone is None or east is None or north is None:
        return math.nan, math.nan, math.nan
    lat, lon = utm_to_latlon(east, north, zone[0], zone[1] >= "N")
    return lat, lon, float(zone[0])


def geo_of(names: list[str], default_zone: tuple[int, str] | None = None) -> np.ndarray:
    """N×3 float64: latitude, longitude (degrees, WGS 84) and UTM zone number of each name, NaN where unknown."""
    return np.array([name_geo(n, default_zone) for n in names], dtype=np.float64).reshape(len(names), 3)


def zone_label(latitude: float, zone: float) -> str | None:
    """``"33T"``: the zone number and the band letter of the latitude, None when either is unknown."""
    if math.isnan(zone) or math.isnan(latitude):
        return None
    return f"{int(zone)}{band(latitude)}"


def name_position(name: str, default_zone: tuple[int, str] | None = None) -> dict[str, Any] | None:
    """The position an image's name gives (gmberton's names: UTM east/north, and zone, latitude and longitude
    where known), None when it carries no UTM east/north."""
    fields = Path(name).name.split("@")
    east, north = (_number(fields[i]) if i < len(fields) else None for i in (1, 2))
    if east is None or north is None:
        return None
    lat, lon, zone = name_geo(name, default_zone)
    return {"name": name, "utm_east": east, "utm_north": north, "utm_zone": zone_label(lat, zone),
            "lat": None if math.isnan(lat) else lat, "lon": None if math.isnan(lon) else lon}  # fmt: skip
