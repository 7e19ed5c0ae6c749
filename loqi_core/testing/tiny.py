"""A tiny method, degradation and dataset writer for fast engine tests on two CPU cores.

    with isolated_plugins(("tiny", tiny_plugin)):
        model = build_model("tiny", weights="random")

``tiny`` is a 3-layer CNN (16 channels, stride 4) + GeM + L2; ``blur<k>`` box-blurs with a k×k kernel.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from pydantic import Field

from loqi_core.degrade.base import Degradation, Degraded
from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.hooks.specs import AggregatorSpec, DegradationSpec, EncoderSpec, Params, Preprocess


class TinyEncoderParams(Params):
    channels: int = Field(16, ge=1)


class GeMParams(Params):
    p: float = 3.0


class BlurParams(Params):
    k: int = Field(ge=1, le=15)


def _encoder(params: TinyEncoderParams):
    from torch import nn

    c = params.channels
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1),
    )
    net.out_channels = c
    return net


def _gem(params: GeMParams, in_channels: int):
    from loqi_core.models.layers import GeM

    return GeM(params.p, normalize=True)


class Blur(Degradation):
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, images, *, seed: int = 0) -> Degraded:
        import torch.nn.functional as F

        out = []
        for img in images:
            x = img[None].float()
            x = F.avg_pool2d(F.pad(x, [self.k // 2, (self.k - 1) // 2] * 2, mode="replicate"), self.k, stride=1)
            out.append(x[0].round().clamp(0, 255).to(img.dtype))
        return Degraded(out)


@hookimpl
def loqi_register_encoders(register):
    register(
        EncoderSpec(
            "tiny",
            _encoder,
            TinyEncoderParams,
            "3-layer CNN for tests",
            preprocess=Preprocess(size=(32, 32)),
            trainable=("encoder.3", "encoder.6", "aggregator"),
            default_loss="mse",
        )
    )


@hookimpl
def loqi_register_aggregators(register):
    register(AggregatorSpec("tiny", _gem, GeMParams, "GeM + L2"))


@hookimpl
def loqi_register_degradations(register):
    register(DegradationSpec("blur", r"blur(?P<k>\d+)", lambda p: Blur(p.k), BlurParams, "box blur", ("blur3",)))


tiny_plugin = SimpleNamespace(
    loqi_register_encoders=loqi_register_encoders,
    loqi_register_aggregators=loqi_register_aggregators,
    loqi_register_degradations=loqi_register_degradations,
)


def write_vpr_folder(root: Path, places: int = 12, queries_per_place: int = 1, size: tuple[int, int] = (32, 48), seed: int = 0) -> Path:
    """Write a gmberton-layout test set: one database image per place 100 m apart, noisy queries of the same places."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for split in ("database", "queries"):
        (root / "images" / "test" / split).mkdir(parents=True, exist_ok=True)
    for place in range(places):
        base = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.float64)
        east, north = 500000.0 + place * 100.0, 4000000.0
        Image.fromarray(base.astype(np.uint8)).save(root / "images/test/database" / f"@{east:.2f}@{north:.2f}@33@T@@@@@{place:04d}@.png")
        for q in range(queries_per_place):
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            qe = east + rng.uniform(-5, 5)
            Image.fromarray(noisy).save(root / "images/test/queries" / f"@{qe:.2f}@{north:.2f}@33@T@@@@@{place:04d}_{q}@.png")
    return root
