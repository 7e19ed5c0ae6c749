"""Decoding image files: one function, ``read_image``, turns any file loqi reads into a uint8 RGB tensor, and
names the file when it cannot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loqi_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class UnreadableImageError(DataError):
    """An image file that cannot be decoded (``path`` names it), so ``skip_bad`` can leave it out."""

    def __init__(self, message: str, path: str | Path) -> None:
        super().__init__(message)
        self.path = Path(path)

    def __reduce__(self) -> tuple:  # crosses from DataLoader workers intact
        return type(self), (str(self), self.path)


def to_uint8(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A single-channel 16-bit or float image to 8 bits by its value range: 16-bit integers ÷ 257, floats in
    [0, 1] × 255, values already in [0, 255] kept; any other range is refused rather than guessed."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UnreadableImageError(f"cannot read image {path}: {mode} image holds NaN or Inf", path)
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
            f"cannot read image {path}: {mode} image with values in [{low:g}, {high:g}]; loqi reads 8-bit, "
            "16-bit and float images in [0, 1] or [0, 255] — convert it to 8-bit PNG or JPEG", path
        )
    return np.repeat(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def read_image(path: str | Path) -> "torch.Tensor":
    """Decode an image file to a uint8 RGB tensor 3×H×W; a missing, corrupt, truncated or oversized file names
    itself. 16-bit and float images are brought to 8 bits by their value range (see ``to_uint8``)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                arr = to_uint8(np.asarray(img), img.mode, path)
            else:
                arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImageError(f"cannot read image {path}: {exc} (a decompression bomb?)", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"cannot read image {path}: {exc} (corrupt or truncated?)", path) from None
    return torch.from_numpy(np.array(arr.transpose(2, 0, 1), order="C"))  # H×W×3 → 3×H×W, writable: the one copy
