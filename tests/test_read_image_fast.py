"""``read_image`` decodes JPEGs with torchvision's libjpeg-turbo only where the pixels are Pillow's, bit for bit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core.data.images import EXIF_ORIENTATION, UnreadableImageError, decode_jpeg_exactly, read_image

NORDLAND = Path(__file__).resolve().parents[1] / "../shared/data/nordland_64x32/winter"


def _photos() -> list[np.ndarray]:
    """Real frames (upscaled to an odd size, so chroma subsampling has edges to round) and one noise image."""
    frames = sorted(NORDLAND.glob("*.png"))[:120:40]
    photos = [np.asarray(Image.open(p).convert("RGB").resize((203, 117), Image.BICUBIC)) for p in frames]
    return photos + [np.random.default_rng(0).integers(0, 256, (61, 77, 3), dtype=np.uint8)]


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


JPEG_KINDS = {
    "4:2:0": dict(quality=85),
    "4:4:4": dict(quality=85, subsampling=0),
    "4:2:2": dict(quality=85, subsampling=1),
    "progressive": dict(quality=60, progressive=True),
    "quality 10": dict(quality=10),
    "RGB-coded (no YCbCr)": dict(quality=90, keep_rgb=True),
    "ICC profile": dict(quality=90, icc_profile=b"\0" * 128),
    "EXIF, upright": dict(quality=90, exif=_exif(1)),
}


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.skipif(not NORDLAND.is_dir(), reason="needs the shared Nordland frames")
@pytest.mark.parametrize("kind", [*JPEG_KINDS, "grey"])
def test_jpeg_pixels_are_pillows_bit_for_bit(tmp_path, kind):
    for i, photo in enumerate(_photos()):
        buf = io.BytesIO()
        image = Image.fromarray(photo)
        (image.convert("L") if kind == "grey" else image).save(buf, "JPEG", **JPEG_KINDS.get(kind, {}))
        data = buf.getvalue()
        with Image.open(io.BytesIO(data)) as img:
            assert decode_jpeg_exactly(img, data) is not None, "the fast decoder must take this file"
        decoded = read_image(_file(tmp_path, f"{i}.jpg", data))
        assert decoded.dtype.is_floating_point is False and decoded.is_contiguous()
        np.testing.assert_array_equal(decoded.permute(1, 2, 0).numpy(), _pillow(data))


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


NOISE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8))
DECLINED = {
    "EXIF rotated (orientation 6)": lambda: _save(NOISE, "JPEG", exif=_exif(6)),
    "CMYK JPEG": lambda: _save(NOISE.convert("CMYK"), "JPEG"),
    "PNG": lambda: _save(NOISE, "PNG"),
    "16-bit PNG": lambda: _save(Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80), "PNG"),
    "palette PNG": lambda: _save(NOISE.convert("P"), "PNG"),
    "WebP": lambda: _save(NOISE, "WEBP", lossless=True),
}


@pytest.mark.parametrize("kind", DECLINED)
def test_everything_else_stays_with_pillow(kind):
    data = DECLINED[kind]()
    with Image.open(io.BytesIO(data)) as img:
        assert decode_jpeg_exactly(img, data) is None


def test_corrupt_jpegs_fail_or_decode_exactly_as_pillow_does(tmp_path):
    """Random byte damage and truncation: read_image refuses a file exactly when Pillow does, else gives its pixels."""
    clean = [_save(Image.fromarray(p), "JPEG", quality=80, progressive=i % 2 == 1) for i, p in enumerate(_photos()[-1:] * 2)]
    outcomes = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        data = bytearray(clean[seed % 2])
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if seed % 3 == 0:
            data = data[: int(rng.integers(20, len(data)))]
        path = _file(tmp_path, f"{seed}.jpg", bytes(data))
        try:
            expected = _pillow(bytes(data))
        except Exception:
            with pytest.raises(UnreadableImageError, match=str(path)):
                read_image(path)
            outcomes.add("refused")
            continue
        np.testing.assert_array_equal(read_image(path).permute(1, 2, 0).numpy(), expected)
        outcomes.add("decoded")
    assert outcomes == {"refused", "decoded"}  # both branches ran
