"""loqi plugin "cricavpr": ``--method cricavpr`` = DINOv2 ViT-B/14 with conv adapters + region GeM + cross-image encoder.

The encoder returns the final-normed patch tokens (768×16×16 at 224², the latent ICKD distils) and the CLS
token; the aggregator pools 14 tokens (CLS, GeM over a 2×2 and a 3×3 grid of regions) and lets them attend
**across the images of a group** (CricaVPR's cross-image encoder) before flattening to 14·768 = 10752-d.

Descriptors depend on which images share a group. loqi makes that deterministic: the aggregator cuts
whatever batch it gets into consecutive groups of ``group_size`` (16, the paper's inference batch) and the
method sets ``eval.batch_size=16``, so an image's group is fixed by its position in the dataset order.
``group_size=1`` is the batch-independent mode (each image attends only to itself); ``group_size=0`` uses
the whole incoming batch, as upstream does. No torch import here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loqi_core.plugin import AggregatorSpec, EncoderSpec, MethodProtocol, Params, Preprocess, WeightsSpec, hookimpl
from loqi_plugin_dinov2 import ArchParams

CITATION = (
    "F. Lu, X. Lan, L. Zhang, D. Jiang, Y. Wang, C. Yuan. CricaVPR: Cross-image Correlation-aware "
    "Representation Learning for Visual Place Recognition. CVPR 2024."
)
RELEASE_URL = "https://github.com/Lu-Feng/CricaVPR/releases/download/v1.0/CricaVPR.pth"


class CricaEncoderParams(ArchParams):
    """The DINOv2 backbone (ViT-B/14 in the release) with a multi-scale conv adapter in every block."""

    adapter_scale: float = Field(0.2, description="weight of the adapter's output added to each block's MLP branch")


class CricaParams(Params):
    group_size: int = Field(
        16, ge=0,
        description="images that attend to each other: consecutive groups of this size (1 = batch-independent, 0 = whole batch)",
    )
    layers: int = Field(2, ge=1, description="layers of the cross-image transformer encoder")
    heads: int = Field(16, ge=1, description="attention heads of the cross-image encoder")
    feedforward: int = Field(2048, ge=1, description="feed-forward width of the cross-image encoder")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the cross-image encoder (training only)")
    gem_p: float = Field(3.0, gt=0.0, description="initial GeM exponent (learned; the checkpoint sets it)")
    regions: Literal["scaled", "fixed"] = Field(
        "scaled",
        description="scaled: the 2×2 and 3×3 grids cut any patch grid proportionally (16 → 0:8:16, 0:5:11:16); "
        "fixed: the release's hard-coded slices 0:8, 8: and 0:5, 5:11, 11: whatever the grid (the LoQI-VPR authors')",
    )


PAPER = MethodProtocol(
    preprocess=Preprocess(mode="center_crop", multiple_of=14, rounding="torchvision"),
    run_defaults={"model.aggregator_params.regions": "fixed", "model.aggregator_params.group_size": 0,
                  "eval.batch_size": 100},
    notes=(
        "cricavpr: centre crop of the native image to a square of side min(H, W)//14·14, no resize "
        "(jamesjin0516/CricaVPR feature_extract.py); upstream resizes to 224×224",
        "cricavpr: the release's fixed region slices 0:8/8: and 0:5/5:11/11: on whatever patch grid that gives "
        "(CricaVPR network.py), and cross-image attention over each batch of 100 (the authors' test batch)",
    ),
)


def _convert_official(obj):
    from loqi_plugin_cricavpr.model import convert_official

    return convert_official(obj)


def _encoder(params: CricaEncoderParams):
    from loqi_plugin_cricavpr.model import CricaEncoder

    return CricaEncoder(params)


def _aggregator(params: CricaParams, in_channels: int):
    from loqi_plugin_cricavpr.model import CricaAggregator

    return CricaAggregator(in_channels, params)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="cricavpr",
            factory=_encoder,
            params=CricaEncoderParams,
            description="DINOv2 ViT-B/14 + MulConv adapters: final-normed patch tokens (768×H/14×W/14) + CLS token",
            preprocess=Preprocess(size=(224, 224), interpolation="bilinear"),
            weights=(
                WeightsSpec(
                    name="official",
                    filename="CricaVPR.pth",
                    url=RELEASE_URL,
                    sha256=None,
                    convert=_convert_official,
                    scope="model",
                    license="MIT (Lu-Feng/CricaVPR; DINOv2 backbone Apache-2.0)",
                    manual="Google Drive id 171lCcxZFFnvEvo88ntIwELeBegcMTEJs (same file)",
                ),
            ),
            # the LoQI reference fine-tunes everything (the original trains only the adapters and the aggregator)
            trainable=("encoder", "aggregator"),
            default_loss="ickd",
            citation=CITATION,
            run_defaults={"eval.batch_size": 16},
            protocols={"paper": PAPER},
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    register(
        AggregatorSpec(
            name="cricavpr",
            factory=_aggregator,
            params=CricaParams,
            description="CLS + GeM of 2×2 and 3×3 regions (14 tokens) → cross-image transformer over groups → 14·C, L2",
            citation=CITATION,
        )
    )
