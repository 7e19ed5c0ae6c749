"""loqi plugin "salad": ``--method salad`` = DINOv2 ViT-B/14 + SALAD (64 clusters × 128 + 256-d token = 8448-d).

The encoder returns the final-normed patch tokens (768×H/14×W/14, the latent ICKD distils) and the CLS
token, which the aggregator turns into SALAD's global scene token. Written from the SALAD paper and its
architecture facts; the upstream code is GPL-3.0 and none of it is copied here. No torch import here.
"""

from __future__ import annotations

from pydantic import Field

from loqi_core.plugin import AggregatorSpec, EncoderSpec, MethodProtocol, Params, Preprocess, WeightsSpec, hookimpl
from loqi_plugin_dinov2 import ArchParams

CITATION = (
    "S. Izquierdo, J. Civera. Optimal Transport Aggregation for Visual Place Recognition. CVPR 2024."
)
RELEASE_URL = "https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt"

PAPER = MethodProtocol(
    preprocess=Preprocess(max_side=1024, multiple_of=14, interpolation="bicubic", antialias=False, rounding="torchvision"),
    notes=(
        "salad: native resolution, bicubic downscale without antialiasing only above 1024 px, then a centre crop to "
        "multiples of 14 (jamesjin0516/salad feature_extract.py); upstream resizes to 322×322",
    ),
)


class SaladEncoderParams(ArchParams):
    """The DINOv2 backbone; SALAD's release uses ViT-B/14 (the default)."""


class SaladParams(Params):
    clusters: int = Field(64, ge=1, description="number of clusters m (the image must give more patches than this)")
    cluster_dim: int = Field(128, ge=1, description="dimensions l of each cluster's aggregated feature")
    token_dim: int = Field(256, ge=1, description="dimensions g of the global scene token (from the CLS token)")
    hidden: int = Field(512, ge=1, description="hidden width of the score, feature and token MLPs")
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="dropout in the score and feature MLPs (training only)")
    sinkhorn_iters: int = Field(3, ge=1, description="Sinkhorn iterations of the optimal-transport assignment")


def _convert_official(obj):
    from loqi_plugin_salad.model import convert_official

    return convert_official(obj)


def _encoder(params: SaladEncoderParams):
    from loqi_plugin_salad.model import SaladEncoder

    return SaladEncoder(params)


def _aggregator(params: SaladParams, in_channels: int):
    from loqi_plugin_salad.model import Salad

    return Salad(in_channels, params)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="salad",
            factory=_encoder,
            params=SaladEncoderParams,
            description="DINOv2 ViT-B/14: final-normed patch tokens (768×H/14×W/14) + CLS token",
            preprocess=Preprocess(size=(322, 322), interpolation="bilinear"),
            weights=(
                WeightsSpec(
                    name="official",
                    filename="dino_salad.ckpt",
                    url=RELEASE_URL,
                    sha256=None,
                    convert=_convert_official,
                    scope="model",
                    license="GPL-3.0 (serizba/salad release; DINOv2 backbone Apache-2.0)",
                    manual="Google Drive id 1u83Dmqmm1-uikOPr58IIhfIzDYwFxCy1 (same file)",
                ),
            ),
            trainable=tuple(f"encoder.backbone.vit.blocks.{i}" for i in range(8, 12))
            + ("encoder.backbone.vit.norm", "aggregator"),
            default_loss="ickd",
            citation=CITATION,
            protocols={"paper": PAPER},
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    register(
        AggregatorSpec(
            name="salad",
            factory=_aggregator,
            params=SaladParams,
            description="SALAD: Sinkhorn (dust bin) soft assignment of patch features to m clusters + global token, L2",
            citation=CITATION,
        )
    )
