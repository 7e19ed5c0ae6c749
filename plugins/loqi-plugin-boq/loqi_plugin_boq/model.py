"""Bag-of-Queries (Ali-bey et al., CVPR 2024), from the paper and the release's architecture facts.

A BoQ block refines the input tokens with one transformer encoder layer (post-norm, ReLU, FF 4·d, no
dropout), then a learned set of queries (self-attention + residual + LayerNorm) cross-attends to those
tokens (LayerNorm on the result). The queries' outputs of all blocks are concatenated along the query
axis, a linear layer mixes that axis down to ``row_dim`` rows, and the flattened result is L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loqi_plugin_boq import BoQDinoEncoderParams, BoQParams
from loqi_plugin_dinov2.vit import DinoV2, create_vit, hub_to_timm


class BoQDinoEncoder(nn.Module):
    """Images → DINOv2 patch tokens before the final norm, (B, C, H/14, W/14)."""

    def __init__(self, params: BoQDinoEncoderParams) -> None:
        super().__init__()
        vit = create_vit(params.arch, params.depth, params.embed_dim, params.num_heads)
        vit.norm = nn.Identity()  # the release never applies it
        self.backbone = DinoV2(vit)
        self.out_channels = self.backbone.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.to_map(self.backbone.run(x)[:, 1:], self.backbone.grid(x))


class ResNet50Layer3(nn.Module):
    """torchvision ResNet-50 cut after layer3: (B, 1024, H/16, W/16); ``net`` indices follow the release."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        r = resnet50(weights=None)
        self.net = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        self.out_channels = 1024

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BoQBlock(nn.Module):
    def __init__(self, dim: int, queries: int, heads: int) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.queries = nn.Parameter(torch.randn(1, queries, dim))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_q = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.encoder(x)
        q = self.queries.to(x.dtype).expand(x.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q, need_weights=False)[0])
        return x, self.norm_out(self.cross_attn(q, x, x, need_weights=False)[0])


class BoQ(nn.Module):
    """Feature map (B, C, h, w) → L2-normalised descriptor of proj_channels × row_dim dimensions."""

    def __init__(self, in_channels: int, params: BoQParams) -> None:
        super().__init__()
        d = params.proj_channels
        if d % 64:
            raise ValueError(f"BoQ proj_channels must be a multiple of 64 (one head per 64 channels), got {d}")
        self.proj_c = nn.Conv2d(in_channels, d, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(d)
        self.boqs = nn.ModuleList(BoQBlock(d, params.queries, d // 64) for _ in range(params.layers))
        self.fc = nn.Linear(params.layers * params.queries, params.row_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_input(self.proj_c(x).flatten(2).transpose(1, 2))
        outs = []
        for block in self.boqs:
            x, out = block(x)
            outs.append(out)
        rows = self.fc(torch.cat(outs, dim=1).transpose(1, 2))  # B × d × row_dim
        return F.normalize(rows.flatten(1), dim=-1)


def convert_official_dinov2(obj: dict) -> dict:
    """dinov2_12288.pth (``backbone.dino.*`` hub DINOv2, ``aggregator.*``) → loqi keys; the unused norm is dropped."""
    from loqi_core.plugin import unwrap_state_dict

    return hub_to_timm(unwrap_state_dict(obj), "backbone.dino.", "encoder.backbone.vit.", drop=("mask_token", "norm"))


def convert_official_resnet50(obj: dict) -> dict:
    """resnet50_16384.pth (``backbone.net.{0,1,4,5,6}`` = conv1, bn1, layer1-3; ``aggregator.*``) → loqi keys."""
    from loqi_core.plugin import unwrap_state_dict

    return {("encoder." + k[len("backbone."):] if k.startswith("backbone.net.") else k): v for k, v in unwrap_state_dict(obj).items()}
