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


def _steps(h: int, w: int, pp: Preprocess) -> list[tuple[str, int, int]]:
    """The geometry of ``pp`` for an h×w image, as sizes only: each step is ("resize" or "crop", height, width)."""
    steps: list[tuple[str, int, int]] = []
    rnd, m = pp.rounding, pp.multiple_of
    if pp.max_side and max(h, w) > pp.max_side:
        h, w = _fit_long_side(h, w, pp.max_side, rnd)
        steps.append(("resize", h, w))
    elif pp.min_side and min(h, w) < pp.min_side:
        s = pp.min_side / min(h, w)
        h, w = round(h * s), round(w * s)
        steps.append(("resize", h, w))
    if pp.size is not None and pp.mode == "resize":
        h, w = pp.size
        steps.append(("resize", h, w))
    elif pp.mode == "center_crop":
        if pp.size is None:
            h = w = max(m, min(h, w) // m * m) if rnd == "torchvision" else min(h, w)
        else:
            s = max(pp.size[0] / h, pp.size[1] / w)
            steps.append(("resize", max(pp.size[0], round(h * s)), max(pp.size[1], round(w * s))))
            h, w = pp.size
        steps.append(("crop", h, w))
    if m > 1:
        h, w = max(m, h // m * m), max(m, w // m * m)
        steps.append(("crop", h, w))
    return steps


def preprocess_sizes(height: int, width: int, pp: Preprocess) -> list[tuple[int, int]]:
    """The sizes an image of ``height``×``width`` takes through ``pp``'s geometry: its own, then one per step, the
    last being what the model sees. Computed without touching pixels, so a server can refuse an image whose
    preprocessing would allocate too much (a 20000×1 strip upscaled to a short side of 128) before decoding it."""
    return [(height, width)] + [(h, w) for _, h, w in _steps(height, width, pp)]


def _geometry(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    for op, h, w in _steps(*x.shape[-2:], pp):
        x = _resize(x, (h, w), pp.interpolation, pp.antialias) if op == "resize" else _center_crop(x, h, w, pp.rounding)
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
