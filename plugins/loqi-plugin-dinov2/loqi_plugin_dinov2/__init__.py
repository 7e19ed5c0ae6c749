"""loqi plugin "dinov2": the DINOv2 ViT backbone shared by the SALAD, CricaVPR, AnyLoc and BoQ plugins.

Registers the ``dinov2`` encoder (final-normed patch tokens, C×H/14×W/14) to mix with any aggregator
(``--encoder dinov2 --aggregator netvlad``), with Meta's pretrained hub weights. The backbone code itself lives
in ``loqi_plugin_dinov2.vit``; this module stays free of torch imports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loqi_core.plugin import EncoderSpec, Params, Preprocess, WeightsSpec, hookimpl

CITATION = (
    "M. Oquab et al. DINOv2: Learning Robust Visual Features without Supervision. TMLR 2024."
)
LICENSE = "Apache-2.0 (DINOv2 code and weights, Meta Platforms)"


class ArchParams(Params):
    """Which DINOv2 ViT; depth/width overrides exist for small tests and experiments (official weights need the defaults)."""

    arch: Literal["vits14", "vitb14", "vitl14", "vitg14"] = Field(
        "vitb14", description="vits14, vitb14, vitl14 or vitg14 (ViT-S/B/L/g with 14-pixel patches)")
    depth: int | None = Field(None, ge=1, description="override the number of blocks (tests; breaks official weights)")
    embed_dim: int | None = Field(None, ge=8, description="override the width (tests; breaks official weights)")
    num_heads: int | None = Field(None, ge=1, description="override the number of attention heads (tests)")


class DinoV2EncoderParams(ArchParams):
    norm: bool = Field(True, description="apply the final LayerNorm to the patch tokens")


def hub_url(arch: str) -> str:
    """Meta's download URL of a DINOv2 hub backbone checkpoint."""
    return f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/dinov2_{arch}_pretrain.pth"


def _convert_hub(state):
    from loqi_plugin_dinov2.vit import hub_to_timm

    return hub_to_timm(state, "", "backbone.vit.")


def _encoder(params: DinoV2EncoderParams):
    from loqi_plugin_dinov2.encoder import PatchTokenEncoder

    return PatchTokenEncoder(params)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="dinov2",
            factory=_encoder,
            params=DinoV2EncoderParams,
            description="DINOv2 ViT patch tokens (final norm), C×H/14×W/14; ViT-B/14 by default",
            preprocess=Preprocess(size=(224, 224), multiple_of=14, interpolation="bicubic"),
            weights=(
                WeightsSpec(
                    name="official",
                    filename="dinov2_vitb14_pretrain.pth",
                    url=hub_url("vitb14"),
                    convert=_convert_hub,
                    scope="encoder",
                    license=LICENSE,
                ),
            ),
            trainable=("encoder.backbone.vit.blocks.10", "encoder.backbone.vit.blocks.11", "encoder.backbone.vit.norm"),
            default_loss="ickd",
            citation=CITATION,
        )
    )
