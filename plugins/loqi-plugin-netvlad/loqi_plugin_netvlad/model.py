"""VGG16 cut at conv5_3 before its ReLU, and the key maps of the weights files NetVLAD loads."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from loqi_core.plugin import unwrap_state_dict

# torchvision's VGG16 "D" configuration: conv widths, "M" = 2×2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
CONV5_3 = 28
"""Index of conv5_3 in ``vgg16.features``; the encoder keeps layers 0..28 (the final ReLU and max-pool are cut)."""


def vgg16_conv5_3() -> nn.Sequential:
    """``vgg16.features[:-2]`` with torchvision's layer indices (so ``encoder.28.weight`` is conv5_3)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = int(v)
    encoder = nn.Sequential(*layers[: CONV5_3 + 1])
    encoder.out_channels = 512
    return encoder


_MODULE = re.compile(r"(^|\.)module\.")


def convert_pytorch_netvlad(obj: dict[str, Any]) -> dict[str, Any]:
    """A pytorch-NetVlad checkpoint (``{epoch, state_dict, ...}`` or the bare state dict) → loqi keys.

    ``encoder.<i>.*`` stays, ``pool.{conv.weight,centroids}`` becomes ``aggregator.*``; the ``module.``
    that multi-GPU training (``nn.DataParallel``) inserts is dropped.
    """
    out = {}
    for key, value in unwrap_state_dict(obj).items():
        key = _MODULE.sub(r"\1", key)
        if key.startswith("pool."):
            key = "aggregator." + key[len("pool."):]
        out[key] = value
    return out


def convert_torchvision_vgg16(obj: dict[str, Any]) -> dict[str, Any]:
    """torchvision's ImageNet ``vgg16`` state dict → the encoder's keys (``features.<i>.*`` up to conv5_3)."""
    out = {}
    for key, value in unwrap_state_dict(obj).items():
        m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if m and int(m.group(1)) <= CONV5_3:
            out[f"{m.group(1)}.{m.group(2)}"] = value
    return out
