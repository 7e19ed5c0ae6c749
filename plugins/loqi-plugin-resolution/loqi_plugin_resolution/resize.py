"""Resizing uint8 images with a named interpolation, in float32 on the images' own device, rounded back to uint8."""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from loqi_core.plugin import ConfigError, Degradation, Degraded


def size_for_height(h: int, w: int, height: int) -> tuple[int, int]:
    """(height, width) with the given height and the aspect ratio kept (width rounded half up, at least 1)."""
    return height, max(1, int(w * height / h + 0.5))


def size_for_scale(h: int, w: int, factor: float) -> tuple[int, int]:
    """Both sides times ``factor``, rounded half up, at least 1 pixel."""
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def resize(image: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize one uint8 3×H×W image to ``size`` (height, width).

    bilinear: half-pixel centres, no antialiasing (what cv2.resize INTER_LINEAR does); bicubic: a = -0.75 with
    antialiasing when shrinking (like ffmpeg/Pillow bicubic scalers); area: the mean over each output pixel's
    source window when shrinking (cv2 INTER_AREA for integer factors), bilinear when enlarging.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    x = image[None].float()
    shrinking = size[0] <= image.shape[-2] and size[1] <= image.shape[-1]
    if interpolation == "area" and shrinking:
        y = F.interpolate(x, size=size, mode="area")
    elif interpolation == "bicubic":
        y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    else:
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def jpeg_file_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """What writing a uint8 3×H×W image as a JPEG file (libjpeg, 4:2:0, as cv2.imwrite and PIL do) and reading it gives."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).contiguous().to(image.device)


class Resize(Degradation):
    """Resize each image to ``target(h, w)``; with ``back``, resize it back to (h, w); with ``file_quality``, pass it
    through a JPEG file of that quality (the authors' ``cv2.imwrite``)."""

    def __init__(
        self, target: Callable[[int, int], tuple[int, int]], interpolation: str, back: bool, file_quality: int | None = None
    ) -> None:
        self.target = target
        self.interpolation = interpolation
        self.back = back
        self.file_quality = file_quality
        self._warned = False

    def __call__(self, images: Sequence[torch.Tensor], *, seed: int = 0) -> Degraded:
        out = []
        for i, img in enumerate(images):
            if img.dtype != torch.uint8 or img.dim() != 3:
                raise ConfigError(f"{self.spec}: image {i} must be a uint8 3×H×W tensor, got {img.dtype} {tuple(img.shape)}")
            h, w = img.shape[-2:]
            size = self.target(h, w)
            if size[0] * size[1] > h * w and not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.spec} enlarges {w}×{h} images to {size[1]}×{size[0]}: that adds pixels instead of removing "
                    "them, so it is no degradation of these images",
                    stacklevel=2,
                )
            small = resize(img, size, self.interpolation)
            result = resize(small, (h, w), self.interpolation) if self.back else small
            out.append(jpeg_file_round_trip(result, self.file_quality) if self.file_quality else result)
        return Degraded(out)
