"""CricaVPR (Lu et al., CVPR 2024): adapter-tuned DINOv2 + region tokens + cross-image correlation encoder.

Architecture facts of the release: each ViT block adds ``0.2 · adapter(norm2(x))`` to its MLP branch (inside
the layer scale). The adapter projects C → C/2 with ReLU, runs three conv branches on the patch grid
(1×1 → C/4; 1×1 → C/32 → 3×3 → C/8; 1×1 → C/32 → 5×5 → C/8; each conv + BN(eps 1e-3) + ReLU), keeps the
CLS token as is, adds its own input back and projects C/2 → C. The aggregator L2-normalises the patch
tokens per location, GeM-pools a 2×2 and a 3×3 grid of regions, puts the CLS token first (14 tokens) and
runs a 2-layer post-norm transformer (16 heads, GELU, FF 2048) whose sequence axis is the *image* axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loqi_core.plugin import GeM
from loqi_plugin_cricavpr import CricaEncoderParams, CricaParams
from loqi_plugin_dinov2.vit import DinoV2, create_vit, hub_to_timm


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=True)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class MulConvAdapter(nn.Module):
    """Tokens (B, 1+h·w, C) → (B, 1+h·w, C): bottleneck with 1×1/3×3/5×5 conv branches on the patch grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        mid, small = dim // 2, dim // 32
        self.D_fc1 = nn.Linear(dim, mid)
        self.D_fc2 = nn.Linear(mid, dim)
        self.branch1 = ConvBNReLU(mid, dim // 4, 1)
        self.branch2 = nn.Sequential(ConvBNReLU(mid, small, 1), ConvBNReLU(small, dim // 8, 3))
        self.branch3 = nn.Sequential(ConvBNReLU(mid, small, 1), ConvBNReLU(small, dim // 8, 5))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = F.relu(self.D_fc1(x))
        b, _, c = y.shape
        grid = y[:, 1:].transpose(1, 2).reshape(b, c, *hw)
        conv = torch.cat([self.branch1(grid), self.branch2(grid), self.branch3(grid)], dim=1)
        return self.D_fc2(torch.cat([y[:, :1], conv.flatten(2).transpose(1, 2)], dim=1) + y)


class CricaEncoder(nn.Module):
    """Images → (patch tokens B×C×h×w after the final norm, CLS token B×C), adapters in every block."""

    def __init__(self, params: CricaEncoderParams) -> None:
        super().__init__()
        self.backbone = DinoV2(create_vit(params.arch, params.depth, params.embed_dim, params.num_heads))
        if self.backbone.embed_dim % 32:
            raise ValueError(f"CricaVPR adapters need a width divisible by 32, got {self.backbone.embed_dim}")
        for blk in self.backbone.vit.blocks:
            blk.adapter = MulConvAdapter(self.backbone.embed_dim)
        self.scale = params.adapter_scale
        self.out_channels = self.backbone.embed_dim

    def _block(self, blk: nn.Module, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        t = t + blk.ls1(blk.attn(blk.norm1(t)))
        y = blk.norm2(t)
        return t + blk.ls2(blk.mlp(y) + self.scale * blk.adapter(y, hw))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.backbone.vit.norm(self.backbone.run(x, block_fn=self._block))
        return self.backbone.to_map(t[:, 1:], self.backbone.grid(x)), t[:, 0]


FIXED_BOUNDS = {2: [0, 8], 3: [0, 5, 11]}
"""The release's hard-coded region starts (written for a 16×16 grid); each last region runs to the edge."""


def region_bounds(n: int, parts: int, regions: str = "scaled") -> list[int]:
    """Cut points of ``n`` rows into ``parts`` regions: 16 → [0, 8, 16] and [0, 5, 11, 16] (the release's).

    ``scaled`` cuts any ``n`` proportionally; ``fixed`` keeps the release's starts whatever ``n`` (the LoQI-VPR
    authors feed native-resolution grids to it, so its last regions grow).
    """
    if regions == "fixed":
        return FIXED_BOUNDS[parts] + [n]
    return [int(n * k / parts + 0.5) for k in range(parts + 1)]


class CricaAggregator(nn.Module):
    """(patch map B×C×h×w, CLS B×C) → 14 region tokens → cross-image encoder within groups → 14·C, L2."""

    def __init__(self, in_channels: int, params: CricaParams) -> None:
        super().__init__()
        self.group_size = params.group_size
        self.regions = params.regions
        self.gem = GeM(params.gem_p, p_shape=(1,))  # the release's aggregation.1.p has shape [1]
        layer = nn.TransformerEncoderLayer(
            in_channels, params.heads, params.feedforward, dropout=params.dropout, activation="gelu", batch_first=False
        )
        self.cross_image = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)

    def region_tokens(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        x = F.normalize(patches, dim=1)
        h, w = x.shape[-2:]
        least = 12 if self.regions == "fixed" else 3
        if min(h, w) < least:
            raise ValueError(f"CricaVPR ({self.regions} regions) needs a patch grid of at least {least}×{least}, got {h}×{w}")
        tokens = [cls]
        for parts in (2, 3):
            rows, cols = region_bounds(h, parts, self.regions), region_bounds(w, parts, self.regions)
            for r in range(parts):
                for c in range(parts):
                    tokens.append(self.gem(x[..., rows[r] : rows[r + 1], cols[c] : cols[c + 1]]))
        return torch.stack(tokens, dim=1)  # B × 14 × C

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        tokens = self.region_tokens(*features)
        size = self.group_size or tokens.shape[0]
        # sequence axis = images of a group (batch_first=False on a B×14×C tensor), as in the release
        out = torch.cat([self.cross_image(group) for group in tokens.split(size, dim=0)], dim=0)
        return F.normalize(out.flatten(1), dim=-1)


def convert_official(obj: dict) -> dict:
    """CricaVPR.pth (``model_state_dict`` of a DataParallel model, ``module.`` prefix) → loqi keys."""
    from loqi_core.plugin import unwrap_state_dict

    state = hub_to_timm(unwrap_state_dict(obj, prefix="module."), "backbone.", "encoder.backbone.vit.")
    renames = {"aggregation.1.p": "aggregator.gem.p"}
    out = {}
    for key, value in state.items():
        if key.startswith("encoder.layers."):
            key = "aggregator.cross_image." + key[len("encoder."):]
        out[renames.get(key, key)] = value
    return out
