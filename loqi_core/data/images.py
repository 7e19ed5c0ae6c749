"""Decoding images, decided once for every path that reads one (evaluation, ``encode``, ``loqi degrade``,
``loqi index build`` and ``loqi serve``): ``decode_image`` turns an image's bytes into a uint8 RGB tensor 3×H×W,
``read_image`` does it for a file, and both name the image when they cannot.

- Formats: JPEG, PNG, WebP, BMP and TIFF (those of ``IMAGE_SUFFIXES``); any other is refused, never guessed.
- The EXIF orientation is applied: a phone photo stored sideways decodes upright.
- 16-bit and float images are brought to 8 bits by their value range (``to_uint8``); grey, palette, CMYK and
  alpha become RGB (alpha dropped); of an animation, the first frame.

``probe_image`` reads only the header (format and upright size), so a caller can refuse an image before a pixel
is decoded. (A PNG may store its EXIF after its pixels: its probe then gives the stored size, width and height
swapped from the decoded one when the orientation turns it by 90°.)
"""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from loqi_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
"""The Pillow formats loqi decodes (those of ``IMAGE_SUFFIXES``); no other decoder is ever tried."""
ORIENTATION = 0x0112
"""The EXIF orientation tag: 1 upright, 2-8 mirrored and/or rotated; 5-8 swap width and height."""


class UnreadableImageError(DataError):
    """An image that cannot be decoded (``path`` names its file, or what the bytes were), so ``skip_bad`` can leave
    it out."""

    def __init__(self, message: str, path: str | Path) -> None:
        super().__init__(message)
        self.path = Path(path)

    def __reduce__(self) -> tuple:  # crosses from DataLoader workers intact
        return type(self), (str(self), self.path)


class ImageTooLargeError(UnreadableImageError):
    """An image whose header declares more pixels than Pillow decodes (a decompression bomb)."""


class ImageHeader(NamedTuple):
    """What an image's header says: its Pillow format and its size once the EXIF orientation is applied."""

    format: str
    width: int
    height: int


def to_uint8(values: np.ndarray, mode: str, name: str | Path) -> np.ndarray:
    """A single-channel 16-bit or float image to 8 bits by its value range: 16-bit integers ÷ 257, floats in
    [0, 1] × 255, values already in [0, 255] kept; any other range is refused rather than guessed."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImageError(f"cannot read image {name}: {mode} image holds NaN or Inf", name)
    if mode.startswith("I;16"):
        scale = 255 / 65535
    elif mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif low >= 0 and high <= 255:
        scale = 1.0
    elif mode == "I" and low >= 0 and high <= 65535:
        scale = 255 / 65535
    else:
        raise UnreadableImageError(
            f"cannot read image {name}: {mode} image with values in [{low:g}, {high:g}]; loqi reads 8-bit, "
            "16-bit and float images in [0, 1] or [0, 255] — convert it to 8-bit PNG or JPEG", name
        )
    return np.repeat(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _orientation(img: "PILImage") -> int:
    """The EXIF orientation as far as the image has been read: a PNG's EXIF may follow its pixels (Pillow would
    decode them to look), and counts once they are decoded."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    value = img.getexif().get(ORIENTATION, 1)
    return value if value in range(1, 9) else 1


def _rgb(img: "PILImage", name: str | Path) -> np.ndarray:
    """The decoded pixels of an open image, upright, as uint8 H×W×3."""
    from PIL import ImageOps

    img.load()
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return to_uint8(np.asarray(img), img.mode, name)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # no copy here: _tensor makes the one copy


def _opened(source: "str | Path | io.BytesIO", name: str | Path, header_only: bool) -> "ImageHeader | np.ndarray":
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source, formats=FORMATS) as img:
            if header_only:
                width, height = img.size
                return ImageHeader(img.format, *((height, width) if _orientation(img) > 4 else (width, height)))
            return _rgb(img, name)
    except FileNotFoundError:
        raise DataError(f"image not found: {name}") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"cannot read image {name}: {exc} (a decompression bomb?)", name) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            f"cannot read image {name}: not a {', '.join(FORMATS)} image", name
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImageError(f"cannot read image {name}: {exc} (corrupt or truncated?)", name) from None


def _tensor(pixels: np.ndarray) -> "torch.Tensor":
    import torch

    return torch.from_numpy(np.array(pixels.transpose(2, 0, 1), order="C"))  # H×W×3 → 3×H×W, writable: the one copy


def probe_image(data: bytes, name: str) -> ImageHeader:
    """The format and upright size of the image in ``data``, from its header only (no pixel is decoded)."""
    return _opened(io.BytesIO(data), name, header_only=True)  # type: ignore[return-value]


def decode_image(data: bytes, name: str) -> "torch.Tensor":
    """The image in ``data`` as a uint8 RGB tensor 3×H×W; ``name`` (a file, "the request body") names it in errors."""
    return _tensor(_opened(io.BytesIO(data), name, header_only=False))  # type: ignore[arg-type]


def read_image(path: str | Path) -> "torch.Tensor":
    """The image file at ``path`` as a uint8 RGB tensor 3×H×W, decoded as ``decode_image`` decodes bytes; a missing,
    corrupt, truncated or oversized file, or one that is not a regular file (a FIFO), names itself."""
    path = Path(path)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as exc:
        raise UnreadableImageError(f"cannot read image {path}: {exc.strerror or exc}", path) from None
    if not regular:  # a FIFO or a device would be read forever, or never
        raise UnreadableImageError(f"cannot read image {path}: not a regular file", path)
    return _tensor(_opened(path, path, header_only=False))  # type: ignore[arg-type]
