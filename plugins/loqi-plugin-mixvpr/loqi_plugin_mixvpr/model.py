"""MixVPR's parts: ResNet-50 cut after layer3, the MixVPR aggregator, and the official key maps."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loqi_core.plugin import unwrap_state_dict


class ResNet50Layer3(nn.Module):
    """torchvision ResNet-50 up to layer3: 1024 channels at stride 16 (20×20 at 320×320)."""

    out_channels = 1024

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class FeatureMixer(nn.Module):
    """One MLP over the flattened spatial axis, with a residual: x + W2·ReLU(W1·LN(x))."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        for m in self.mix:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixVPR(nn.Module):
    """C×H×W maps → ``mix_depth`` feature mixers over H·W → channel projection C→C' → row projection H·W→R → L2.

    The descriptor has C'·R dimensions (1024·4 = 4096 for the paper's main model).
    """

    def __init__(self, in_channels: int, in_h: int, in_w: int, out_channels: int, out_rows: int,
                 mix_depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.in_h, self.in_w = in_h, in_w
        hw = in_h * in_w
        self.mix = nn.Sequential(*[FeatureMixer(hw, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(hw, out_rows)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        if isinstance(x, tuple):
            x = x[0]
        if tuple(x.shape[-2:]) != (self.in_h, self.in_w):
            raise ValueError(
                f"MixVPR aggregator expects {self.in_h}×{self.in_w} feature maps (its in_h/in_w parameters; "
                f"320×320 images for ResNet-50), got {x.shape[-2]}×{x.shape[-1]}: keep the method's input size "
                "or set aggregator_params in_h/in_w (the official weights need 20×20)"
            )
        x = self.mix(x.flatten(2))  # B×C×HW
        x = self.channel_proj(x.transpose(1, 2))  # B×HW×C'
        x = self.row_proj(x.transpose(1, 2))  # B×C'×R
        return F.normalize(x.flatten(1), p=2, dim=1)


def convert_official(obj: dict[str, Any]) -> dict[str, Any]:
    """The official MixVPR checkpoint (``backbone.model.*``, ``aggregator.*``) → loqi's ``encoder.*``/``aggregator.*``."""
    out = {}
    for key, value in unwrap_state_dict(obj).items():
        if key.startswith("backbone.model."):
            key = "encoder." + key[len("backbone.model."):]
        out[key] = value
    return out


def convert_torchvision_resnet50(obj: dict[str, Any]) -> dict[str, Any]:
    """torchvision's ImageNet ``resnet50`` state dict → the encoder's keys (layer4 and fc dropped)."""
    return {k: v for k, v in unwrap_state_dict(obj).items() if not re.match(r"(layer4|fc)\.", k)}
