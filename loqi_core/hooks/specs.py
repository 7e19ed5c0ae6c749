"""What plugins register: one frozen dataclass per extension point, plus the weights and preprocessing facts.

Nothing here imports torch, so a plugin module that builds these specs imports in milliseconds.
Factories are called only when a run needs the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.data.sets import TestSet, TrainSet
    from loqi_core.degrade.base import Degradation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIDE = (8, 8192)
"""Bounds of an input size (pixels per side): beyond them a run fails late or tries to allocate terabytes."""


def check_image_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    """An input size (height, width) within ``IMAGE_SIDE``: the one rule for presets, ``--image-size`` and the API."""
    lo, hi = IMAGE_SIDE
    if size is not None and not all(lo <= side <= hi for side in size):
        raise ValueError(f"each side must be between {lo} and {hi} pixels, got {list(size)}")
    return size


class Params(BaseModel):
    """Base class for every plugin's params model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """For factories that take no parameters."""


class Preprocess(Params):
    """How a method turns a uint8 RGB image into its input tensor (applied batched, on the model's device)."""

    size: tuple[int, int] | None = None
    """(height, width) fed to the model; None keeps the image's own size."""
    mode: Literal["resize", "center_crop"] = "resize"
    """resize: scale to ``size``; center_crop: crop the largest centred square or ``size`` window."""
    multiple_of: int = Field(1, ge=1, le=IMAGE_SIDE[1])
    """Crop height and width down to a multiple of this (14 for DINOv2 patches)."""
    max_side: int | None = Field(None, ge=IMAGE_SIDE[0], le=IMAGE_SIDE[1])
    """Downscale, keeping the aspect ratio, when the longer side exceeds this."""
    min_side: int | None = Field(None, ge=1, le=IMAGE_SIDE[1])
    """Upscale, keeping the aspect ratio, when the shorter side is below this (tiny frames, stride-32 CNNs)."""
    interpolation: Literal["bilinear", "bicubic", "area", "nearest"] = "bilinear"
    antialias: bool = True
    """Antialias bilinear/bicubic resizes; False = a plain tensor resize (torchvision's default on tensors before 0.17)."""
    rounding: Literal["loqi", "torchvision"] = "loqi"
    """loqi: max/min_side sizes rounded, centre-crop offsets floored. torchvision (the LoQI-VPR authors' transforms):
    max_side sizes truncated, offsets round((H−h)/2), and a centre square cut at once to a multiple of ``multiple_of``."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @field_validator("size")
    @classmethod
    def _size(cls, size: tuple[int, int] | None) -> tuple[int, int] | None:
        return check_image_size(size)


@dataclass(frozen=True)
class WeightsSpec:
    """Where a named set of pretrained weights comes from and how its keys map onto loqi's modules."""

    name: str
    """Variant name used with ``--weights NAME`` ("official", "imagenet", "pitts30k", ...)."""
    filename: str
    """File name in the weights cache (``$LOQI_CACHE/weights/<filename>``)."""
    url: str | None = None
    """Direct download URL; a file torch.hub stored from it (``$TORCH_HOME/hub/checkpoints/<its name>``) is reused."""
    sha256: str | None = None
    """Checked on download and every load; None: unchecked, unless the URL's file name carries torch.hub's
    ``-<sha256 prefix>.`` (torchvision's ``resnet50-0676ba61.pth``)."""
    convert: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Maps the file's state dict onto loqi's keys (``encoder.*``, ``aggregator.*``)."""
    locate: Callable[[], Path] | None = None
    """For weights shipped inside a Python package: returns the local file path."""
    scope: Literal["model", "encoder"] = "model"
    """``model``: the file covers encoder and aggregator (strict load); ``encoder``: the encoder only."""
    license: str = ""
    manual: str = ""
    """How to get the file by hand when there is no direct URL (e.g. a Google Drive id)."""


PROTOCOLS = ("upstream", "paper")
"""upstream: each method as its own release runs it; paper: as the LoQI-VPR authors ran it."""


@dataclass(frozen=True)
class MethodProtocol:
    """A method under a named protocol: its preprocessing and the config defaults that differ from upstream."""

    preprocess: Preprocess | None = None
    """Replaces the method's preprocessing; None keeps it."""
    run_defaults: dict[str, Any] = field(default_factory=dict)
    """Config defaults by dotted path, layered over the method's ``run_defaults`` (files and flags still override)."""
    notes: tuple[str, ...] = ()
    """One line per difference from upstream, with where the fact comes from (shown in reports and docs)."""
    files: tuple["WeightsSpec", ...] = ()
    """Other files the method reads under this protocol (AnyLoc: the indoor vocabulary); plans say where to get them."""


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder: uint8-free, normalised images (B×3×H×W) → latent map B×C×h×w (or a tuple led by it).

    A method plugin registers its encoder under the method's name; method-wide facts live here:
    preprocessing, pretrained weights, the layers distillation trains and the paper's best loss.
    """

    name: str
    factory: Callable[..., Any]
    """``factory(params) -> nn.Module`` with an ``out_channels`` attribute."""
    params: type[Params] = NoParams
    description: str = ""
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: tuple[WeightsSpec, ...] = ()
    trainable: tuple[str, ...] = ()
    """Parameter-name prefixes of the whole model (``encoder.layer3``, ``aggregator``) the student trains; () = all."""
    default_loss: str = "mse"
    default_aggregator: str | None = None
    """Aggregator used with ``--method NAME``; None means the aggregator registered under the same name."""
    citation: str = ""
    """The paper to cite for this encoder (shown by ``loqi plugins`` and in every run's results)."""
    run_defaults: dict[str, Any] = field(default_factory=dict)
    """Config defaults this method sets, by dotted path (``{"distill.lr": 5e-5}``); files and flags override them."""
    protocols: dict[str, MethodProtocol] = field(default_factory=dict)
    """What this method does differently under a named protocol (``--protocol paper``: as the paper's authors ran it)."""


@dataclass(frozen=True)
class AggregatorSpec:
    """An aggregator: the encoder's output → an L2-normalised global descriptor B×D."""

    name: str
    factory: Callable[..., Any]
    """``factory(params, in_channels) -> nn.Module``."""
    params: type[Params] = NoParams
    description: str = ""
    citation: str = ""
    """The paper to cite for this aggregator (shown by ``loqi plugins`` and in every run's results)."""


@dataclass(frozen=True)
class DegradationSpec:
    """A family of degradations named by a grammar, e.g. ``jpeg(?P<quality>\\d+)`` matches ``jpeg10``.

    The named groups of ``pattern`` fill the params model; specs chain with ``+`` (``res360p+qp40``).
    """

    name: str
    pattern: str
    factory: Callable[..., Degradation]
    """``factory(params) -> Degradation``."""
    params: type[Params] = NoParams
    description: str = ""
    examples: tuple[str, ...] = ()
    protocols: dict[str, str] = field(default_factory=dict)
    """Suffix this grammar's token takes under a named protocol when it ends the chain (``{"paper": "-q95"}``)."""


@dataclass(frozen=True)
class LossSpec:
    """A distillation loss: ``factory(params)`` returns a callable ``loss(batch: DistillBatch) -> scalar``."""

    name: str
    factory: Callable[..., Any]
    params: type[Params] = NoParams
    description: str = ""
    needs_places: bool = False
    """True when the loss needs place ids (triplet); label-free training sets cannot feed it."""


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: ``test(params)`` → TestSet and/or ``train(params)`` → TrainSet, read from ``params.root``."""

    name: str
    params: type[Params] = NoParams
    test: Callable[..., TestSet] | None = None
    train: Callable[..., TrainSet] | None = None
    description: str = ""
    source: str = ""
    """Where the data comes from and how to obtain it (there is no download at run time)."""
    license: str = ""
    layout: str = ""
    """The expected on-disk layout under the dataset root."""
    expected_counts: dict[str, int] = field(default_factory=dict)
    """e.g. {"database": 27592, "queries": 2760}: a mismatch is warned about loudly."""
