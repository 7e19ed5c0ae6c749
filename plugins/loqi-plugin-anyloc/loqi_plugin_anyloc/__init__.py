"""loqi plugin "anyloc": ``--method anyloc`` = DINOv2 ViT-g/14, value facet of block 31 + hard-assignment VLAD.

The encoder keeps the backbone only up to the facet it reads (blocks 0–30 and the qkv projection of block
31): the latent is the L2-normalised "value" third of that projection for every patch (1536×H/14×W/14).
The aggregator assigns each patch to its most similar of 32 centres (cosine), sums residuals per centre,
intra-normalises and L2-normalises: 32·1536 = 49152-d. The centres (the VLAD vocabulary) are a buffer of
the model: an official per-domain file, a file you built with ``loqi anyloc vocab``, or random (tests).
No torch import here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loqi_core.plugin import AggregatorSpec, EncoderSpec, MethodProtocol, Params, Preprocess, WeightsSpec, hookimpl
from loqi_plugin_dinov2 import LICENSE as DINOV2_LICENSE
from loqi_plugin_dinov2 import ArchParams, hub_url

CITATION = (
    "N. Keetha, A. Mishra, J. Karhade, K. M. Jatavallabhula, S. Scherer, M. Krishna, S. Garg. "
    "AnyLoc: Towards Universal Visual Place Recognition. IEEE RA-L 2023."
)
DOMAINS = ("indoor", "urban", "aerial", "structured", "unstructured", "global")
VOCAB_BASE_URL = "https://github.com/AnyLoc/DINO/releases/download/v1"
class AnyLocEncoderParams(ArchParams):
    """The backbone, the block and the facet AnyLoc reads (ViT-g/14, block 31, value in the paper)."""

    arch: Literal["vits14", "vitb14", "vitl14", "vitg14"] = Field("vitg14", description="DINOv2 architecture")
    layer: int = Field(31, ge=0, description="index of the block whose facet is read (0-based)")
    facet: Literal["query", "key", "value", "token"] = Field(
        "value", description="query/key/value third of the block's qkv projection, or the block's output tokens"
    )


class VLADParams(Params):
    clusters: int = Field(32, ge=1, description="number of VLAD centres")
    vocabulary: str = Field(
        "urban",
        description=(
            "the centres: an official domain (indoor, urban, aerial, structured, unstructured, global; "
            "ViT-g/14 block 31 value, 32 centres), a file (.pt/.npy/.safetensors, clusters×C, e.g. from "
            "`loqi anyloc vocab`), or random (seeded unit vectors, for tests)"
        ),
    )


def vocabulary_weights(domain: str) -> WeightsSpec:
    """Where the official centres of one AnyLoc domain come from (cached like any weights file)."""
    filename = f"dinov2_vitg14_l31_value_c32_{domain}_c_centers.pt"
    return WeightsSpec(
        name=f"vocabulary-{domain}",
        filename=filename,
        url=f"{VOCAB_BASE_URL}/{filename}",
        license="BSD-3-Clause (AnyLoc/DINO release)",
    )


PAPER = MethodProtocol(
    preprocess=Preprocess(max_side=1024, multiple_of=14, interpolation="bicubic", antialias=False, rounding="torchvision"),
    run_defaults={"model.aggregator_params.vocabulary": "indoor"},
    notes=(
        "anyloc: bicubic downscale without antialiasing above 1024 px, centre crop to multiples of 14 "
        "(jamesjin0516/AnyLoc feature_extract.py); upstream antialiases",
        "anyloc: the indoor vocabulary on every test set, as the authors' test config (upstream: urban)",
    ),
    files=(vocabulary_weights("indoor"),),
)


def _convert_hub(state):
    from loqi_plugin_dinov2.vit import hub_to_timm

    return hub_to_timm(state, "", "backbone.vit.")


def _encoder(params: AnyLocEncoderParams):
    from loqi_plugin_anyloc.model import AnyLocEncoder

    return AnyLocEncoder(params)


def _aggregator(params: VLADParams, in_channels: int):
    from loqi_plugin_anyloc.model import HardVLAD

    return HardVLAD(in_channels, params)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="anyloc",
            factory=_encoder,
            params=AnyLocEncoderParams,
            description="DINOv2 ViT-g/14 up to block 31: L2-normalised value facet per patch (1536×H/14×W/14)",
            preprocess=Preprocess(max_side=1024, multiple_of=14, interpolation="bicubic"),
            weights=(
                WeightsSpec(
                    name="official",
                    filename="dinov2_vitg14_pretrain.pth",
                    url=hub_url("vitg14"),
                    sha256=None,
                    convert=_convert_hub,
                    scope="encoder",
                    license=DINOV2_LICENSE,
                ),
            ),
            trainable=("encoder",),
            default_loss="ickd+triplet",
            citation=CITATION,
            protocols={"paper": PAPER},
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    register(
        AggregatorSpec(
            name="anyloc",
            factory=_aggregator,
            params=VLADParams,
            description="hard-assignment VLAD (cosine nearest centre, residual sums, intra-norm + L2), clusters·C dims",
            citation=CITATION,
        )
    )


@hookimpl
def loqi_register_commands(cli):
    from loqi_plugin_anyloc.cli import anyloc_group

    cli.add_command(anyloc_group)
