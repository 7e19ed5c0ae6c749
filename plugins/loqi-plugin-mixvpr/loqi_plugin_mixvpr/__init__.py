"""loqi plugin "mixvpr": ``--method mixvpr`` (4096-d), ``mixvpr-512`` and ``mixvpr-128``.

ResNet-50 cut after layer3 (1024×20×20 at 320×320) + MixVPR (4 feature mixers, channel and row projections).
Keep this module free of torch imports: the factories import the model lazily.
"""

from __future__ import annotations

from pydantic import Field

from loqi_core.plugin import (
    AggregatorSpec,
    EncoderSpec,
    MethodProtocol,
    NoParams,
    Params,
    Preprocess,
    WeightsSpec,
    hookimpl,
)

CITATION = (
    "A. Ali-bey, B. Chaib-draa, P. Giguère. MixVPR: Feature Mixing for Visual Place Recognition. WACV 2023."
)
LICENSE = "no licence file in amaralibey/MixVPR (all rights reserved by default); research use at your own judgement"
TRAINABLE = ("encoder.layer2", "encoder.layer3", "aggregator")
PAPER = MethodProtocol(
    preprocess=Preprocess(size=(320, 320), interpolation="bicubic", antialias=False),
    notes=(
        "mixvpr: torchvision Resize((320, 320), bicubic, antialias=None) on the normalised tensor, i.e. no "
        "antialiasing (jamesjin0516/MixVPR feature_extract.py); upstream resizes with antialiasing",
    ),
)


class MixVPRParams(Params):
    """The official 4096-d configuration (out_channels 1024 × out_rows 4)."""

    in_h: int = Field(20, ge=1, description="height of the encoder's feature map (20 at 320×320)")
    in_w: int = Field(20, ge=1, description="width of the encoder's feature map")
    out_channels: int = Field(1024, ge=1, description="channel projection size C'")
    out_rows: int = Field(4, ge=1, description="row projection size R; the descriptor has C'·R dimensions")
    mix_depth: int = Field(4, ge=1, description="number of stacked feature mixers")
    mlp_ratio: float = Field(1.0, gt=0, description="hidden width of each mixer's MLP, relative to H·W")


class MixVPR512Params(MixVPRParams):
    """The official 512-d configuration (256 × 2)."""

    out_channels: int = Field(256, ge=1, description="channel projection size C'")
    out_rows: int = Field(2, ge=1, description="row projection size R")


class MixVPR128Params(MixVPRParams):
    """The official 128-d configuration (64 × 2)."""

    out_channels: int = Field(64, ge=1, description="channel projection size C'")
    out_rows: int = Field(2, ge=1, description="row projection size R")


# method name -> (params model, Google Drive id, official file name, descriptor size)
VARIANTS: dict[str, tuple[type[MixVPRParams], str, str, int]] = {
    "mixvpr": (MixVPRParams, "1vuz3PvnR7vxnDDLQrdHJaOA04SQrtk5L", "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt", 4096),
    "mixvpr-512": (MixVPR512Params, "1khiTUNzZhfV2UUupZoIsPIbsMRBYVDqj", "resnet50_MixVPR_512_channels(256)_rows(2).ckpt", 512),
    "mixvpr-128": (MixVPR128Params, "1DQnefjk1hVICOEYPwE4-CZAZOvi1NSJz", "resnet50_MixVPR_128_channels(64)_rows(2).ckpt", 128),
}


def _convert_official(obj):
    from loqi_plugin_mixvpr.model import convert_official

    return convert_official(obj)


def _convert_imagenet(obj):
    from loqi_plugin_mixvpr.model import convert_torchvision_resnet50

    return convert_torchvision_resnet50(obj)


IMAGENET = WeightsSpec(
    name="imagenet",
    filename="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256=None,
    convert=_convert_imagenet,
    scope="encoder",
    license="BSD-3-Clause (torchvision IMAGENET1K_V1); ImageNet terms apply to the training data",
)


def _weights(gdrive_id: str, filename: str) -> tuple[WeightsSpec, ...]:
    official = WeightsSpec(
        name="official",
        filename=filename,
        url=None,
        sha256=None,
        convert=_convert_official,
        scope="model",
        license=LICENSE,
        manual=f"Google Drive (https://drive.google.com/file/d/{gdrive_id}/view, the MixVPR authors' release)",
    )
    return (official, IMAGENET)


def _encoder(params: NoParams):
    from loqi_plugin_mixvpr.model import ResNet50Layer3

    return ResNet50Layer3()


def _aggregator(params: MixVPRParams, in_channels: int):
    from loqi_plugin_mixvpr.model import MixVPR

    return MixVPR(in_channels, params.in_h, params.in_w, params.out_channels, params.out_rows,
                  params.mix_depth, params.mlp_ratio)


@hookimpl
def loqi_register_encoders(register):
    for name, (_, gdrive_id, filename, dim) in VARIANTS.items():
        register(
            EncoderSpec(
                name=name,
                factory=_encoder,
                description=f"ResNet-50 cut after layer3 (1024×20×20 at 320×320); MixVPR {dim}-d",
                preprocess=Preprocess(size=(320, 320), interpolation="bicubic"),
                weights=_weights(gdrive_id, filename),
                trainable=TRAINABLE,
                default_loss="ickd",
                citation=CITATION,
                protocols={"paper": PAPER},
            )
        )


@hookimpl
def loqi_register_aggregators(register):
    for name, (params, _, _, dim) in VARIANTS.items():
        register(
            AggregatorSpec(
                name=name,
                factory=_aggregator,
                params=params,
                description=f"MixVPR feature mixing → {dim}-d (4 mixers over H·W, channel and row projections, L2)",
                citation=CITATION,
            )
        )
