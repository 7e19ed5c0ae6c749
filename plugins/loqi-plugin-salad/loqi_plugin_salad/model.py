"""DINOv2-SALAD, written from the paper (Izquierdo & Civera, CVPR 2024) and the release's architecture facts.

SALAD scores every patch against m clusters with a small MLP, adds a "dust bin" row whose score is one
learned scalar, and turns the scores into a soft assignment by entropic optimal transport (a few Sinkhorn
iterations in the log domain). The clusters' marginals are 1/(n+m) each and the dust bin takes the
remaining (n−m)/(n+m); every patch (column) has mass 1/(n+m). Features reduced by a second MLP are summed
per cluster with those weights, each cluster L2-normalised, a global token (MLP of the CLS token, L2) is
prepended, and the whole vector is L2-normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from loqi_plugin_dinov2.vit import DinoV2, create_vit, hub_to_timm
from loqi_plugin_salad import SaladEncoderParams, SaladParams


class SaladEncoder(nn.Module):
    """Images → (patch tokens B×C×h×w after the final norm, CLS token B×C)."""

    def __init__(self, params: SaladEncoderParams) -> None:
        super().__init__()
        self.backbone = DinoV2(create_vit(params.arch, params.depth, params.embed_dim, params.num_heads))
        self.out_channels = self.backbone.embed_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.backbone.vit.norm(self.backbone.run(x))
        return self.backbone.to_map(t[:, 1:], self.backbone.grid(x)), t[:, 0]


def log_optimal_transport(scores: torch.Tensor, dust_bin: torch.Tensor, iters: int) -> torch.Tensor:
    """Log transport plan (B, m+1, n) of scores (B, m, n) plus a dust-bin row, by ``iters`` Sinkhorn steps."""
    b, m, n = scores.shape
    if n <= m:
        raise ValueError(f"SALAD needs more patches than clusters: {n} patches, {m} clusters (use larger images)")
    s = torch.cat([scores, dust_bin.to(scores.dtype).expand(b, 1, n)], dim=1)
    log_norm = -math.log(n + m)
    log_rows = torch.full((m + 1,), log_norm, dtype=s.dtype, device=s.device)
    log_rows[-1] = log_norm + math.log(n - m)
    log_cols = torch.full((n,), log_norm, dtype=s.dtype, device=s.device)
    u = torch.zeros(b, m + 1, dtype=s.dtype, device=s.device)
    v = torch.zeros(b, n, dtype=s.dtype, device=s.device)
    for _ in range(iters):
        u = log_rows - torch.logsumexp(s + v[:, None, :], dim=2)
        v = log_cols - torch.logsumexp(s + u[:, :, None], dim=1)
    return s + u[:, :, None] + v[:, None, :] - log_norm


def _mlp_1x1(c_in: int, hidden: int, c_out: int, dropout: float) -> nn.Sequential:
    # index layout (conv, dropout, relu, conv) = the release's key names .0 and .3
    return nn.Sequential(nn.Conv2d(c_in, hidden, 1), nn.Dropout(dropout), nn.ReLU(), nn.Conv2d(hidden, c_out, 1))


class Salad(nn.Module):
    """(patch map B×C×h×w, CLS B×C) → L2-normalised descriptor of m·l + g dimensions."""

    def __init__(self, in_channels: int, params: SaladParams) -> None:
        super().__init__()
        self.params = params
        self.token_features = nn.Sequential(
            nn.Linear(in_channels, params.hidden), nn.ReLU(), nn.Linear(params.hidden, params.token_dim)
        )
        self.cluster_features = _mlp_1x1(in_channels, params.hidden, params.cluster_dim, params.dropout)
        self.score = _mlp_1x1(in_channels, params.hidden, params.clusters, params.dropout)
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        patches, cls = features
        f = self.cluster_features(patches).flatten(2)  # B × l × n
        scores = self.score(patches).flatten(2)  # B × m × n
        # the transport plan in float32 even under bf16 autocast: log-sum-exp iterations need the precision
        work = torch.promote_types(scores.dtype, torch.float32)
        plan = log_optimal_transport(scores.to(work), self.dust_bin.to(work), self.params.sinkhorn_iters)
        assign = plan.exp()[:, :-1].to(f.dtype)
        local = F.normalize(torch.einsum("bln,bmn->blm", f, assign), dim=1).flatten(1)
        token = F.normalize(self.token_features(cls), dim=-1)
        return F.normalize(torch.cat([token, local], dim=-1), dim=-1)


def convert_official(obj: dict) -> dict:
    """The release checkpoint (``backbone.model.*`` hub DINOv2, ``aggregator.*``) → loqi keys."""
    from loqi_core.plugin import unwrap_state_dict

    return hub_to_timm(unwrap_state_dict(obj), "backbone.model.", "encoder.backbone.vit.")
