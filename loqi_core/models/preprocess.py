"""A method's preprocessing (``Preprocess``) applied batched, on the model's device: uint8 RGB images → the
normalised float batch its encoder eats."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from loqi_core.hooks.specs import Preprocess


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def _center_crop(x: torch.Tensor, h: int, w: int, rounding: str = "loqi") -> torch.Tensor:
    """The centred h×w window; torchvision rounding places it at round((H−h)/2) (half to even), loqi floors."""
    dh, dw = x.shape[-2] - h, x.shape[-1] - w
    top, left = (int(round(dh / 2.0)), int(round(dw / 2.0))) if rounding == "torchvision" else (dh // 2, dw // 2)
    return x[..., top : top + h, left : left + w]


def _fit_long_side(h: int, w: int, side: int, rounding: str) -> tuple[int, int]:
    if rounding == "torchvision":  # the authors' downscale: the long side exactly, the other int(other·side/long)
        return (side, int(w * side / h)) if h >= w else (int(h * side / w), side)
    s = side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _geometry(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    h, w = x.shape[-2:]
    aa, rnd = pp.antialias, pp.rounding
    if pp.max_side and max(h, w) > pp.max_side:
        x = _resize(x, _fit_long_side(h, w, pp.max_side, rnd), pp.interpolation, aa)
    elif pp.min_side and min(h, w) < pp.min_side:
        s = pp.min_side / min(h, w)
        x = _resize(x, (round(h * s), round(w * s)), pp.interpolation, aa)
    m = pp.multiple_of
    if pp.size is not None and pp.mode == "resize":
        x = _resize(x, pp.size, pp.interpolation, aa)
    elif pp.mode == "center_crop":
        h, w = x.shape[-2:]
        if pp.size is None:
            side = max(m, min(h, w) // m * m) if rnd == "torchvision" else min(h, w)
            x = _center_crop(x, side, side, rnd)
        else:
            s = max(pp.size[0] / h, pp.size[1] / w)
            x = _resize(x, (max(pp.size[0], round(h * s)), max(pp.size[1], round(w * s))), pp.interpolation, aa)
            x = _center_crop(x, *pp.size, rnd)
    if m > 1:
        h, w = x.shape[-2:]
        x = _center_crop(x, max(m, h // m * m), max(m, w // m * m), rnd)
    return x


def preprocess_images(
    images: torch.Tensor | Sequence[torch.Tensor], pp: Preprocess, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 → float on ``device`` (bytes move, not floats) → geometry → ImageNet-style normalisation."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        batch = _geometry(images.to(device, non_blocking=True).float().div_(255), pp)
    else:
        parts = [_geometry(img.to(device, non_blocking=True)[None].float().div_(255), pp) for img in images]
        shapes = {tuple(p.shape[-2:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} cannot share a batch without a fixed input size")
        batch = torch.cat(parts)
    for c in range(3):  # python scalars: no host-to-device copy, so no sync in the training step
        batch[:, c].sub_(pp.mean[c]).div_(pp.std[c])
    return batch
