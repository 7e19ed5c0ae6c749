"""The NetVLAD layer (Arandjelović et al., CVPR 2016) in pytorch-NetVlad's parameter layout.

Soft-assign each L2-normalised local feature to K clusters with a 1×1 convolution (no bias), sum the
residuals to each centroid weighted by the assignment, L2-normalise each cluster's row (intra-norm), flatten
and L2-normalise again: K·C dimensions (64 × 512 = 32768 for VGG16).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class NetVLAD(nn.Module):
    """NetVLAD pooling: B×C×H×W features → B×(K·C) L2-normalised descriptor.

    Parameters are ``conv.weight`` (K×C×1×1) and ``centroids`` (K×C), the names of the pytorch-NetVlad
    checkpoints, so the Pittsburgh-30k weights load without renaming inside the layer.
    """

    def __init__(self, dim: int, clusters: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.clusters = clusters
        self.conv = nn.Conv2d(dim, clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    @property
    def out_dim(self) -> int:
        return self.clusters * self.dim

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(x, tuple):
            x = x[0]
        x = F.normalize(x, p=2, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # B×K×N
        local = x.flatten(2)  # B×C×N
        # Σ_n a_kn (x_n − c_k) = Σ_n a_kn x_n − c_k Σ_n a_kn: the same sum as a per-cluster loop, in one matmul.
        vlad = torch.bmm(assign, local.transpose(1, 2)) - assign.sum(dim=2, keepdim=True) * self.centroids[None]
        vlad = F.normalize(vlad, p=2, dim=2)
        return F.normalize(vlad.flatten(1), p=2, dim=1)

    @torch.no_grad()
    def init_from_clusters(self, centroids: np.ndarray, features: np.ndarray) -> float:
        """Set centroids and soft-assignment weights from k-means centres of L2-normalised local features.

        As in the original: the assignment weights are the unit-length centroids scaled by
        ``alpha = -log(0.01) / mean(top1 - top2)`` of the features' two largest centroid similarities,
        so that the second-best cluster gets about 1 % of the best one's weight. Returns alpha.
        """
        centroids = np.asarray(centroids, dtype=np.float32)
        features = np.asarray(features, dtype=np.float32)
        if centroids.shape != (self.clusters, self.dim):
            raise ValueError(f"centroids have shape {centroids.shape}, the layer needs {(self.clusters, self.dim)}")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features have shape {features.shape}, the layer needs N×{self.dim}")
        unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        sims = features @ unit.T  # N×K
        top2 = -np.partition(-sims, 1, axis=1)[:, :2]
        gap = float(np.mean(top2[:, 0] - top2[:, 1]))
        if not gap > 0:
            raise ValueError("the features do not separate the clusters (mean top-1 − top-2 similarity is 0)")
        alpha = -math.log(0.01) / gap
        device, dtype = self.centroids.device, self.centroids.dtype
        self.centroids.copy_(torch.from_numpy(centroids).to(device, dtype))
        self.conv.weight.copy_(torch.from_numpy(alpha * unit)[:, :, None, None].to(device, dtype))
        return alpha
