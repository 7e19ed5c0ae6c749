"""Latitude/longitude (WGS84) → UTM, written out so that loqi needs no ``utm`` dependency.

Uses Krüger's series to fourth order in the third flattening n (Karney, "Transverse Mercator with an
accuracy of a few nanometers", J. Geodesy 2011, eqs. 7-9 and 35): sub-millimetre within a zone, plenty for
25 m positives. Zone numbers follow the standard grid, including the Norway and Svalbard exceptions.
"""

from __future__ import annotations

import math

import numpy as np

from loqi_core.plugin import DataError

_A = 6378137.0
_F = 1 / 298.257223563
_K0 = 0.9996
_N = _F / (2 - _F)
_E = 2 * math.sqrt(_N) / (1 + _N)  # first eccentricity
_RECT = _A / (1 + _N) * (1 + _N**2 / 4 + _N**4 / 64)  # rectifying radius
_ALPHA = (
    _N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16 + 41 * _N**4 / 180,
    13 * _N**2 / 48 - 3 * _N**3 / 5 + 557 * _N**4 / 1440,
    61 * _N**3 / 240 - 103 * _N**4 / 140,
    49561 * _N**4 / 161280,
)
_LETTERS = "CDEFGHJKLMNPQRSTUVWXX"


def zone_number(lat: float, lon: float) -> int:
    """The UTM zone of a point, with the Norway (32V) and Svalbard (31X-37X) exceptions."""
    if 56 <= lat < 64 and 3 <= lon < 12:
        return 32
    if 72 <= lat <= 84 and 0 <= lon < 42:
        return 31 if lon < 9 else 33 if lon < 21 else 35 if lon < 33 else 37
    return int((lon + 180) // 6) % 60 + 1


def zone_letter(lat: float) -> str:
    return _LETTERS[int((lat + 80) // 8)]


def from_latlon_arrays(lat: np.ndarray, lon: np.ndarray, zone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised core: easting and northing (metres) of each point in the given zones."""
    phi = np.radians(lat)
    dlam = np.radians(lon - (6.0 * zone - 183.0))
    s = np.sin(phi)
    t = np.sinh(np.arctanh(s) - _E * np.arctanh(_E * s))
    xi = np.arctan2(t, np.cos(dlam))
    eta = np.arctanh(np.sin(dlam) / np.sqrt(1 + t * t))
    east, north = eta.copy(), xi.copy()
    for j, a in enumerate(_ALPHA, start=1):
        east += a * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        north += a * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    east = 500000.0 + _K0 * _RECT * east
    north = _K0 * _RECT * north + np.where(lat < 0, 10000000.0, 0.0)
    return east, north


def from_latlon(lat: float, lon: float) -> tuple[float, float, int, str]:
    """(easting, northing, zone number, zone letter) of a WGS84 point, like ``utm.from_latlon``."""
    if not (-80.0 <= lat <= 84.0):
        raise DataError(f"latitude {lat} is outside the UTM range [-80, 84]")
    if not (-180.0 <= lon <= 180.0):
        raise DataError(f"longitude {lon} is outside [-180, 180]")
    zone = zone_number(lat, lon)
    e, n = from_latlon_arrays(np.array([lat]), np.array([lon]), np.array([zone]))
    return float(e[0]), float(n[0]), zone, zone_letter(lat)


def to_positions(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """N×2 positions for loqi: (zone·10⁶ + easting, northing).

    UTM eastings repeat in every zone; adding the zone number times 10⁶ m (eastings lie in 0.16-0.84·10⁶)
    keeps places of different zones far apart while distances within a zone stay exact metres.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if lat.size and (lat.min() < -80 or lat.max() > 84 or np.abs(lon).max() > 180):
        raise DataError("latitude/longitude outside the UTM range")
    zone = np.array([zone_number(a, o) for a, o in zip(lat.tolist(), lon.tolist())], dtype=np.float64)
    east, north = from_latlon_arrays(lat, lon, zone)
    return np.stack([zone * 1e6 + east, north], axis=1)
