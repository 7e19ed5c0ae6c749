"""loqi plugin "boq": Bag-of-Queries (BoQ) aggregation, ``--method boq`` (DINOv2) and ``--method boq-r50``.

``boq``: DINOv2 ViT-B/14 patch tokens without the final norm (768×23×23 at 322²) → 3×3 conv to 384
channels → 2 BoQ blocks of 64 learned queries → Linear(128 → 32) over the query axis → 384·32 = 12288-d.
``boq-r50``: ResNet-50 up to layer3 (1024×24×24 at 384²) → 512 channels → 512·32 = 16384-d.
Upstream's forward returns (descriptor, attentions); loqi's aggregator returns the descriptor only.
This goes beyond the LoQI paper (which did not distil BoQ). No torch import here.
"""

from __future__ import annotations

from pydantic import Field

from loqi_core.plugin import AggregatorSpec, EncoderSpec, NoParams, Params, Preprocess, WeightsSpec, hookimpl
from loqi_plugin_dinov2 import ArchParams

CITATION = "A. Ali-bey, B. Chaib-draa, P. Giguère. BoQ: A Place is Worth a Bag of Learnable Queries. CVPR 2024."
RELEASE = "https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0"
LICENSE = "MIT (amaralibey/Bag-of-Queries; DINOv2 backbone Apache-2.0, ResNet-50 from torchvision BSD-3-Clause)"


class BoQDinoEncoderParams(ArchParams):
    """The DINOv2 backbone (ViT-B/14 in the release); the final norm is not applied."""


class BoQParams(Params):
    proj_channels: int = Field(384, ge=64, description="channels after the 3×3 input projection (multiple of 64: heads = channels/64)")
    queries: int = Field(64, ge=1, description="learned queries per BoQ block")
    layers: int = Field(2, ge=1, description="number of BoQ blocks")
    row_dim: int = Field(32, ge=1, description="output rows: the descriptor has proj_channels × row_dim dimensions")


class BoQR50Params(BoQParams):
    proj_channels: int = Field(512, ge=64, description="channels after the 3×3 input projection (multiple of 64)")


def _convert_dino(obj):
    from loqi_plugin_boq.model import convert_official_dinov2

    return convert_official_dinov2(obj)


def _convert_r50(obj):
    from loqi_plugin_boq.model import convert_official_resnet50

    return convert_official_resnet50(obj)


def _dino_encoder(params: BoQDinoEncoderParams):
    from loqi_plugin_boq.model import BoQDinoEncoder

    return BoQDinoEncoder(params)


def _r50_encoder(params: NoParams):
    from loqi_plugin_boq.model import ResNet50Layer3

    return ResNet50Layer3()


def _aggregator(params: BoQParams, in_channels: int):
    from loqi_plugin_boq.model import BoQ

    return BoQ(in_channels, params)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="boq",
            factory=_dino_encoder,
            params=BoQDinoEncoderParams,
            description="DINOv2 ViT-B/14 patch tokens before the final norm (768×H/14×W/14)",
            preprocess=Preprocess(size=(322, 322), interpolation="bicubic"),
            weights=(
                WeightsSpec(
                    name="official", filename="boq_dinov2_12288.pth", url=f"{RELEASE}/dinov2_12288.pth",
                    convert=_convert_dino, scope="model", license=LICENSE,
                ),
            ),
            trainable=("encoder.backbone.vit.blocks.10", "encoder.backbone.vit.blocks.11", "aggregator"),
            default_loss="ickd",
            citation=CITATION,
        )
    )
    register(
        EncoderSpec(
            name="boq-r50",
            factory=_r50_encoder,
            description="ResNet-50 up to layer3 (1024×H/16×W/16)",
            preprocess=Preprocess(size=(384, 384), interpolation="bicubic"),
            weights=(
                WeightsSpec(
                    name="official", filename="boq_resnet50_16384.pth", url=f"{RELEASE}/resnet50_16384.pth",
                    convert=_convert_r50, scope="model", license=LICENSE,
                ),
            ),
            trainable=("encoder.net.6", "aggregator"),
            default_loss="ickd",
            citation=CITATION,
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    queries = "Bag-of-Queries: 2 blocks × 64 learned queries"
    register(AggregatorSpec("boq", _aggregator, BoQParams, f"{queries}, 384·32 = 12288-d, L2", CITATION))
    register(AggregatorSpec("boq-r50", _aggregator, BoQR50Params, f"{queries}, 512·32 = 16384-d, L2", CITATION))
