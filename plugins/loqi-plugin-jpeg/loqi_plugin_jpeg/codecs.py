"""Image codec round trips on uint8 tensors: JPEG through torchvision.io, WebP and AVIF through Pillow.

JPEG on CPU tensors uses torchvision's libjpeg-turbo (IJG tables, 4:2:0 chroma, the same bytes Pillow writes
for ``save(..., "JPEG", quality=Q)``, the authors' tool); on CUDA tensors it uses nvJPEG, batched. The two
paths are not bit-identical (different DCT and chroma resampling), so a run states which one it used.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image, features
from torchvision.io import decode_jpeg, encode_jpeg

from loqi_core.plugin import ConfigError, Degradation, Degraded


def _check_images(images: Sequence[torch.Tensor], spec: str) -> None:
    for i, img in enumerate(images):
        if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
            raise ConfigError(f"{spec}: image {i} must be a uint8 3×H×W tensor, got {img.dtype} {tuple(img.shape)}")


class Jpeg(Degradation):
    """JPEG encode + decode at one quality; the byte count is the size of each JPEG file."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self.spec = f"jpeg{quality}"

    def __call__(self, images: Sequence[torch.Tensor], *, seed: int = 0) -> Degraded:
        images = list(images)
        if not images:
            return Degraded([], [])
        _check_images(images, self.spec)
        devices = {img.device for img in images}
        if len(devices) > 1:
            raise ConfigError(f"{self.spec}: images are on several devices ({', '.join(map(str, devices))}); use one")
        device = images[0].device
        with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call that TorchCodec supersedes it
            warnings.simplefilter("ignore", DeprecationWarning)
            data = encode_jpeg([img.contiguous() for img in images], quality=self.quality)
            data = [d.cpu() for d in data]
            decoded = decode_jpeg(data, device=device)
        return Degraded(list(decoded), [int(d.numel()) for d in data])


class PillowCodec(Degradation):
    """A lossy round trip through a Pillow codec (``WEBP`` or ``AVIF``), one image at a time, on the CPU.

    WebP: libwebp, method 4 (Pillow's default). AVIF: Pillow's default encoder (libaom), speed 6, 4:2:0,
    one thread so that the bytes do not depend on the machine. Images on a GPU come back on it.
    """

    def __init__(self, fmt: str, quality: int) -> None:
        feature = fmt.lower()
        if not features.check(feature):
            raise ConfigError(
                f"{feature}{quality}: the installed Pillow ({Image.__version__}) was built without {fmt} support "
                f"(plugin loqi-plugin-jpeg); install a Pillow wheel that has it (pip install -U pillow; AVIF "
                "needs Pillow >= 11.3) or use jpegQ"
            )
        self.fmt = fmt
        self.quality = quality
        self.spec = f"{feature}{quality}"
        self.options: dict[str, object] = {"quality": quality}
        if fmt == "WEBP":
            self.options["method"] = 4
        else:
            self.options.update(speed=6, subsampling="4:2:0", max_threads=1)

    def __call__(self, images: Sequence[torch.Tensor], *, seed: int = 0) -> Degraded:
        _check_images(images, self.spec)
        out, sizes = [], []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(buf, self.fmt, **self.options)
            data = buf.getvalue()
            with Image.open(io.BytesIO(data)) as decoded:
                arr = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().to(img.device))
            sizes.append(len(data))
        return Degraded(out, sizes)
