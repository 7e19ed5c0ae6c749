"""loqi plugin "netvlad": ``--method netvlad`` = VGG16 (conv5_3, pre-ReLU, 512 ch) + NetVLAD (K=64, 32768-d).

Also registers the ``netvlad`` aggregator for any encoder (``--aggregator netvlad``) and the command
``loqi netvlad init-clusters``. Keep this module free of torch imports: factories import it lazily.
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
    "R. Arandjelović, P. Gronat, A. Torii, T. Pajdla, J. Sivic. NetVLAD: CNN architecture for weakly "
    "supervised place recognition. CVPR 2016."
)
GDRIVE_ID = "17luTjZFCX639guSVy00OUtzfTQo4AMF2"
PAPER = MethodProtocol(
    # the finetune baseline trains with NetVLAD's own loss (pytorch-NetVlad main.py: TripletMarginLoss with margin
    # √0.1, p=2; the 10 hardest negatives beyond 25 m; the best positive by the model being trained)
    run_defaults={
        "distill.finetune_loss": "triplet",
        "distill.finetune_loss_params": {
            "triplet": {"margin": 0.1**0.5, "negatives": 10, "negative_mining": "hardest", "negative_min_distance_m": 25.0}
        },
    },
    notes=(
        "netvlad: native image size, as upstream (LoQI-VPR Feature_Extractor.py): nothing differs",
        "netvlad: finetune baseline with NetVLAD's own training loss (pytorch-NetVlad): triplet, margin √0.1, the 10 "
        "hardest negatives beyond 25 m within each 6 places × 4 images batch (pytorch-NetVlad mines them among 1000 "
        "random database images)",
    ),
)


class NetVLADParams(Params):
    clusters: int = Field(64, ge=2, description="number of NetVLAD clusters K; the descriptor has K·C dimensions")


def _convert_official(obj):
    from loqi_plugin_netvlad.model import convert_pytorch_netvlad

    return convert_pytorch_netvlad(obj)


def _convert_imagenet(obj):
    from loqi_plugin_netvlad.model import convert_torchvision_vgg16

    return convert_torchvision_vgg16(obj)


WEIGHTS = (
    WeightsSpec(
        name="official",
        filename="pytorch-netvlad_vgg16_pitts30k_checkpoint.pth.tar",
        url=None,
        sha256=None,
        convert=_convert_official,
        scope="model",
        license="no licence file in Nanne/pytorch-NetVlad (all rights reserved by default); research use at your own judgement",
        manual=(
            f"Google Drive (https://drive.google.com/open?id={GDRIVE_ID}, the pytorch-NetVlad VGG16 Pittsburgh-30k "
            "model; the file inside is vgg16_netvlad_checkpoint/checkpoints/checkpoint.pth.tar)"
        ),
    ),
    WeightsSpec(
        name="imagenet",
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256=None,
        convert=_convert_imagenet,
        scope="encoder",
        license="BSD-3-Clause (torchvision); ImageNet terms apply to the training data",
    ),
)


def _encoder(params: NoParams):
    from loqi_plugin_netvlad.model import vgg16_conv5_3

    return vgg16_conv5_3()


def _aggregator(params: NetVLADParams, in_channels: int):
    from loqi_plugin_netvlad.layer import NetVLAD

    return NetVLAD(in_channels, params.clusters)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            name="netvlad",
            factory=_encoder,
            description="VGG16 features cut at conv5_3 before its ReLU (512 channels, stride 16)",
            preprocess=Preprocess(),
            weights=WEIGHTS,
            trainable=("encoder.24", "encoder.26", "encoder.28", "aggregator"),
            default_loss="mse",
            citation=CITATION,
            protocols={"paper": PAPER},
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    register(
        AggregatorSpec(
            name="netvlad",
            factory=_aggregator,
            params=NetVLADParams,
            description="NetVLAD: soft-assigned residuals to K centroids, intra-normalised then L2 (K·C dims)",
            citation=CITATION,
        )
    )


@hookimpl
def loqi_register_commands(cli):
    from loqi_plugin_netvlad.cli import netvlad_group

    cli.add_command(netvlad_group)
