"""Layers shared by several methods, written once: generalised-mean (GeM) pooling.

Imports torch at module level: only model code imports this module, never the command line's startup path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p``: B×C×H×W → B×C, L2-normalised when ``normalize``.

    ``(mean over H×W of max(x, eps)^p)^(1/p)``; of a ``(map, ...)`` tuple the map is pooled. ``p_shape`` is the
    shape of the parameter ``p`` as checkpoints store it: ``()`` (a scalar) or ``(1,)`` (CricaVPR's release).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, *, normalize: bool = False, p_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full(p_shape, float(p)))
        self.eps, self.normalize = eps, normalize

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(x, tuple):
            x = x[0]
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def extra_repr(self) -> str:
        return f"p_shape={tuple(self.p.shape)}, eps={self.eps}, normalize={self.normalize}"
