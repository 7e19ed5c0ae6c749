"""The ``dinov2`` encoder: DINOv2 patch tokens as a C×h×w latent map."""

from __future__ import annotations

import torch
from torch import nn

from loqi_plugin_dinov2 import DinoV2EncoderParams
from loqi_plugin_dinov2.vit import DinoV2, create_vit


class PatchTokenEncoder(nn.Module):
    """Images (sides multiple of 14) → patch tokens (B, C, H/14, W/14), final-normed unless ``norm=False``."""

    def __init__(self, params: DinoV2EncoderParams) -> None:
        super().__init__()
        self.backbone = DinoV2(create_vit(params.arch, params.depth, params.embed_dim, params.num_heads))
        self.norm = params.norm
        self.out_channels = self.backbone.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.backbone.run(x)
        if self.norm:
            t = self.backbone.vit.norm(t)
        return self.backbone.to_map(t[:, 1:], self.backbone.grid(x))
