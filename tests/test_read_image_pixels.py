"""``read_image`` hands over Pillow's pixels with one copy: the same values as ``convert("RGB")`` for every mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from loqi_core.data.images import read_image

NOISE = np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8)
RGB = Image.fromarray(NOISE)

KINDS = {
    "JPEG 4:2:0": lambda: (RGB, "JPEG", {"quality": 85}),
    "JPEG 4:4:4 progressive": lambda: (RGB, "JPEG", {"quality": 85, "subsampling": 0, "progressive": True}),
    "JPEG grey": lambda: (RGB.convert("L"), "JPEG", {}),
    "JPEG CMYK": lambda: (RGB.convert("CMYK"), "JPEG", {}),
    "PNG RGB": lambda: (RGB, "PNG", {}),
    "PNG RGBA": lambda: (Image.fromarray(np.dstack([NOISE, NOISE[..., 0]])), "PNG", {}),
    "PNG grey": lambda: (RGB.convert("L"), "PNG", {}),
    "PNG grey + alpha": lambda: (RGB.convert("LA"), "PNG", {}),
    "PNG palette": lambda: (RGB.convert("P"), "PNG", {}),
    "PNG palette + transparency": lambda: (RGB.convert("P"), "PNG", {"transparency": 3}),
    "PNG 1-bit": lambda: (RGB.convert("1"), "PNG", {}),
    "PNG interlaced": lambda: (RGB, "PNG", {"interlace": 1}),
    "WebP lossless": lambda: (RGB, "WEBP", {"lossless": True}),
    "BMP": lambda: (RGB, "BMP", {}),
    "TIFF": lambda: (RGB, "TIFF", {}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_pixels_are_pillows_rgb_conversion(tmp_path, kind):
    image, fmt, options = KINDS[kind]()
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    decoded = read_image(path)
    assert decoded.shape == (3, 23, 37) and decoded.is_contiguous()
    np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (4, 1)])
def test_tiny_images_come_back_writable(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.fromarray(NOISE[: size[0], : size[1]]).save(path)
    decoded = read_image(path)
    decoded += 1  # a tensor torch may write to (numpy would share a read-only Pillow buffer otherwise)
    np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy(), NOISE[: size[0], : size[1]] + 1)
