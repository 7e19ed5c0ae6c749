"""Equirectangular → perspective views: the sampling maps and a bilinear remap, in numpy (no OpenCV).

Conventions. Equirectangular image W×H: column x ↔ longitude λ = (x + 0.5)/W·360° − 180° (0° at the centre
column), row y ↔ latitude φ = 90° − (y + 0.5)/H·180°. A view with yaw ψ looks at longitude ψ (positive to the
right), pitch θ tilts it up. Its pinhole camera has focal f = (w/2)/tan(FOV/2); camera axes x right, y down,
z forward. A direction (λ, φ) therefore appears in the view of yaw ψ at
u = w/2 + f·tan(λ − ψ), v = h/2 − f·tan(φ)/cos(λ − ψ) (pitch 0; u, v measured from the image corner).
"""

from __future__ import annotations

import math

import numpy as np


def view_yaws(views: int, step_deg: float, start_deg: float = 0.0) -> list[float]:
    """Yaw of each view in degrees: start, start + step, ... (the paper: 18 views, 20° apart from 0°)."""
    return [(start_deg + k * step_deg) % 360.0 for k in range(views)]


def view_maps(
    eq_size: tuple[int, int], out_size: tuple[int, int], fov_deg: float, yaw_deg: float, pitch_deg: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates (x, y in equirectangular pixels, centres at integers) for each output pixel."""
    eq_h, eq_w = eq_size
    h, w = out_size
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    x, y = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    z = np.full_like(x, f)
    p, q = math.radians(pitch_deg), math.radians(yaw_deg)
    y2 = y * math.cos(p) - z * math.sin(p)
    z2 = y * math.sin(p) + z * math.cos(p)
    x3 = x * math.cos(q) + z2 * math.sin(q)
    z3 = -x * math.sin(q) + z2 * math.cos(q)
    lon = np.arctan2(x3, z3)
    lat = np.arctan2(-y2, np.hypot(x3, z3))
    map_x = (lon / (2 * math.pi) + 0.5) * eq_w - 0.5
    map_y = (0.5 - lat / math.pi) * eq_h - 0.5
    return map_x, map_y


def remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear sampling of an H×W×C uint8 image; wraps around horizontally (360°), clamps vertically."""
    eq_h, eq_w = image.shape[:2]
    x0 = np.floor(map_x).astype(np.int64)
    y0 = np.floor(map_y).astype(np.int64)
    wx = (map_x - x0)[..., None]
    wy = (map_y - y0)[..., None]
    x1 = (x0 + 1) % eq_w
    x0 %= eq_w
    y1 = np.clip(y0 + 1, 0, eq_h - 1)
    y0 = np.clip(y0, 0, eq_h - 1)
    img = image.astype(np.float32)
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bottom = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return np.clip(top * (1 - wy) + bottom * wy + 0.5, 0, 255).astype(np.uint8)


def project(lon_deg: float, lat_deg: float, yaw_deg: float, out_size: tuple[int, int], fov_deg: float) -> tuple[float, float] | None:
    """Where direction (λ, φ) lands in the view of yaw ψ (pitch 0): (column, row) in pixel-centre
    coordinates, or None when it is behind the camera or outside the view."""
    h, w = out_size
    d = math.radians((lon_deg - yaw_deg + 180.0) % 360.0 - 180.0)
    if math.cos(d) <= 0:
        return None
    f = (w / 2) / math.tan(math.radians(fov_deg) / 2)
    u = w / 2 + f * math.tan(d)
    v = h / 2 - f * math.tan(math.radians(lat_deg)) / math.cos(d)
    if not (0 <= u < w and 0 <= v < h):
        return None
    return u - 0.5, v - 0.5
