"""The one decoding rule (loqi_core/data/images.py): what every path gets from a file or from bytes, pinned pixel
for pixel, so that evaluation, `loqi index build` and `loqi serve` decode an image the same way whoever changes how
it decodes; and the preprocessing geometry computed from sizes alone (what the server bounds before decoding)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loqi_core.data.images import ImageHeader, UnreadableImageError, decode_image, probe_image, read_image
from loqi_core.hooks.specs import Preprocess
from loqi_core.models.preprocess import _geometry, preprocess_sizes

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
"""An asymmetric 6×10 image: every rotation and mirror gives other pixels."""



def _encoded(array: np.ndarray, fmt: str, mode: str | None = None, orientation: int | None = None, **save) -> bytes:
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if orientation is not None:
        exif = img.getexif()
        exif[0x0112] = orientation
        save["exif"] = exif
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def _both(data: bytes, tmp_path: Path, suffix: str) -> torch.Tensor:
    """decode_image of the bytes and read_image of the same bytes as a file: they must agree exactly."""
    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    from_bytes, from_file = decode_image(data, "the body"), read_image(path)
    assert from_bytes.dtype == torch.uint8 and from_bytes.shape[0] == 3 and from_bytes.is_contiguous()
    assert torch.equal(from_bytes, from_file)
    return from_bytes


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_probe_gives_the_upright_size(orientation, tmp_path):
    data = _encoded(RGB, "PNG", orientation=orientation)  # lossless, so pixels compare exactly
    got = _hwc(_both(data, tmp_path, ".png"))
    with Image.open(io.BytesIO(data)) as img:
        from PIL import ImageOps

        want = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    np.testing.assert_array_equal(got, want)
    if orientation == 1:
        np.testing.assert_array_equal(got, RGB)
    if orientation == 3:  # stored upside down
        np.testing.assert_array_equal(got, RGB[::-1, ::-1])
    if orientation == 6:  # the usual phone photo: stored landscape, shown portrait (rotated 90° clockwise)
        np.testing.assert_array_equal(got, np.rot90(RGB, -1))
    height, width = got.shape[:2]
    assert probe_image(data, "x") == ImageHeader("PNG", width, height)
    assert (height, width) == ((10, 6) if orientation > 4 else (6, 10))


def test_a_jpeg_with_exif_orientation_decodes_upright(tmp_path):
    data = _encoded(RGB.repeat(8, 0).repeat(8, 1), "JPEG", orientation=8, quality=95)
    got = _both(data, tmp_path, ".jpg")
    assert tuple(got.shape) == (3, 80, 48)
    assert probe_image(data, "x") == ImageHeader("JPEG", 48, 80)


def test_16_bit_grey_is_scaled_by_its_range_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 6 * 10).reshape(6, 10).astype(np.uint16)
    got = _hwc(_both(_encoded(values, "PNG"), tmp_path, ".png"))
    np.testing.assert_array_equal(got[..., 0], np.rint(values / 257).astype(np.uint8))
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    assert got.max() == 255 and got.min() == 0  # Pillow's convert("RGB") would have clipped nearly all to 255


def test_16_bit_with_exif_orientation_is_scaled_then_upright(tmp_path):
    values = (np.arange(60).reshape(6, 10) * 1000).astype(np.uint16)
    got = _hwc(_both(_encoded(values, "PNG", orientation=6), tmp_path, ".png"))
    np.testing.assert_array_equal(got[..., 0], np.rot90(np.rint(values / 257).astype(np.uint8), -1))


def test_float_tiff_in_0_1_is_scaled_and_other_ranges_are_refused(tmp_path):
    values = np.linspace(0, 1, 60).reshape(6, 10).astype(np.float32)
    got = _hwc(_both(_encoded(values, "TIFF", mode="F"), tmp_path, ".tif"))
    np.testing.assert_array_equal(got[..., 0], np.rint(values.astype(np.float64) * 255).astype(np.uint8))
    with pytest.raises(UnreadableImageError, match=r"F image with values in \[-1, 9\]"):
        decode_image(_encoded(np.linspace(-1, 9, 60).reshape(6, 10).astype(np.float32), "TIFF", mode="F"), "x")


@pytest.mark.parametrize(
    ("mode", "fmt", "suffix"),
    [("L", "PNG", ".png"), ("P", "PNG", ".png"), ("RGBA", "PNG", ".png"), ("LA", "PNG", ".png"), ("1", "PNG", ".png"),
     ("CMYK", "JPEG", ".jpg"), ("RGB", "WEBP", ".webp"), ("RGB", "BMP", ".bmp"), ("RGB", "TIFF", ".tif")],
)  # fmt: skip
def test_every_mode_becomes_rgb_as_pillow_converts_it(mode, fmt, suffix, tmp_path):
    img = Image.fromarray(RGB).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = buf.getvalue()
    got = _hwc(_both(data, tmp_path, suffix))
    with Image.open(io.BytesIO(data)) as again:
        np.testing.assert_array_equal(got, np.asarray(again.convert("RGB")))


def test_the_first_frame_of_an_animation(tmp_path):
    frames = [Image.fromarray(np.full((6, 10, 3), v, np.uint8)) for v in (40, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    got = _both(buf.getvalue(), tmp_path, ".webp")
    assert int(got.min()) == int(got.max()) == 40


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(b"", "not a JPEG, PNG, WEBP, BMP, TIFF image"), (b"GIF89a" + bytes(40), "not a JPEG, PNG, WEBP, BMP, TIFF image"),
     (b"plain text, no image", "not a JPEG")],
)  # fmt: skip
def test_other_formats_and_non_images_are_refused_by_name(data, fragment):
    for call in (decode_image, probe_image):
        with pytest.raises(UnreadableImageError, match=fragment) as err:
            call(data, "upload.bin")
        assert "upload.bin" in str(err.value)


def test_a_gif_file_is_refused_even_with_a_png_name(tmp_path):
    path = tmp_path / "looks.png"
    Image.fromarray(RGB).save(path, format="GIF")
    with pytest.raises(UnreadableImageError, match="looks.png: not a JPEG"):
        read_image(path)


def test_truncated_and_missing_files_name_themselves(tmp_path):
    data = _encoded(RGB.repeat(20, 0).repeat(20, 1), "JPEG", quality=90)
    with pytest.raises(UnreadableImageError, match="cannot read image the body: .*truncated"):
        decode_image(data[: len(data) // 2], "the body")
    from loqi_core.errors import DataError

    with pytest.raises(DataError, match="image not found: .*nope.png"):
        read_image(tmp_path / "nope.png")


PREPROCESS = [
    Preprocess(), Preprocess(size=(32, 64)), Preprocess(min_side=128), Preprocess(max_side=100),
    Preprocess(size=(48, 48), mode="center_crop"), Preprocess(mode="center_crop", multiple_of=14, rounding="torchvision"),
    Preprocess(max_side=90, multiple_of=14), Preprocess(min_side=40, size=(30, 50), mode="center_crop", multiple_of=8),
    Preprocess(max_side=77, rounding="torchvision", multiple_of=7),
]  # fmt: skip


@pytest.mark.parametrize("pp", PREPROCESS, ids=range(len(PREPROCESS)))
def test_preprocess_sizes_are_the_sizes_preprocessing_produces(pp):
    for h, w in itertools.product((17, 32, 61, 200), (15, 64, 99, 300)):
        sizes = preprocess_sizes(h, w, pp)
        got = tuple(_geometry(torch.zeros(1, 3, h, w), pp).shape[-2:])
        assert sizes[0] == (h, w)
        if all(min(s) >= pp.multiple_of for s in sizes):
            assert got == sizes[-1], (h, w, sizes)
        else:  # a side shorter than multiple_of is cropped to less than asked: the sizes bound it from above
            assert got[0] <= sizes[-1][0] and got[1] <= sizes[-1][1], (h, w, sizes)


def test_preprocess_sizes_show_the_upscaled_strip():
    """The denial of service of issue 22: a 20000×1 strip under min_side 128 becomes 128×2,560,000 pixels."""
    assert preprocess_sizes(1, 20000, Preprocess(min_side=128)) == [(1, 20000), (128, 2_560_000)]
    assert max(h * w for h, w in preprocess_sizes(1, 20000, Preprocess(min_side=128, size=(32, 32)))) == 327_680_000


def _header_only_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_probe_reads_no_pixels_and_a_bomb_is_its_own_error():
    """A PNG header claiming 9000×8000 pixels with almost no data: the probe answers from the header alone; one
    claiming more than Pillow decodes is an ImageTooLargeError (the server answers it 413, not 400)."""
    from loqi_core.data.images import ImageTooLargeError

    data = _header_only_png(9000, 8000)
    assert probe_image(data, "x") == ImageHeader("PNG", 9000, 8000)
    with pytest.raises(UnreadableImageError, match="truncated"):
        decode_image(data, "x")
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        probe_image(_header_only_png(30000, 20000), "x")


def test_only_regular_files_are_read(tmp_path):
    """A FIFO named like an image would block the reader forever; a device would be read forever."""
    import os

    os.mkfifo(tmp_path / "frame.png")
    for path in (tmp_path / "frame.png", Path("/dev/zero")):
        with pytest.raises(UnreadableImageError, match="not a regular file"):
            read_image(path)
