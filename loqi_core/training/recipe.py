"""What a run's config makes of a training: the encoder spec, the loss, the trainable layers and their train
modes, the training views, the step-indexed data, and the pre-flight check ``loqi run`` does before evaluating."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from loqi_core.config import RunConfig
from loqi_core.data.datasets import load_dataset
from loqi_core.data.sets import TrainSet
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.errors import ConfigError, DataError, LoqiError
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.hooks.specs import EncoderSpec, Preprocess
from loqi_core.losses.expression import CompositeLoss, build_loss, parse_loss_expression
from loqi_core.training.data import BatchPlan, PlanConfig, StepDataset, ViewConfig, typical_size
from loqi_core.training.mining import Mined

Mode = Literal["distill", "finetune"]


def encoder_spec(config: RunConfig, plugins: Plugins) -> EncoderSpec:
    """The encoder spec a config's model section names (it carries trainable layers and the default loss)."""
    m = config.model
    if m.encoder is not None:
        return plugins.encoder(m.encoder)
    if m.method is None:
        raise ConfigError("model.method: give a method (--method NAME) or an encoder and an aggregator")
    return plugins.method(m.method)[0]


def loss_expression(config: RunConfig, mode: Mode, spec: EncoderSpec) -> str:
    if mode == "finetune":
        return config.distill.finetune_loss
    return config.distill.loss if config.distill.loss is not None else spec.default_loss


def training_loss(config: RunConfig, mode: Mode, spec: EncoderSpec, plugins: Plugins) -> CompositeLoss:
    """The loss a training run of ``mode`` uses, built from the registry (unknown terms and bad params fail here)."""
    expr = loss_expression(config, mode, spec)
    names = {n for _, n in parse_loss_expression(expr)}
    params = config.distill.loss_params
    if mode == "finetune":
        params = {k: v for k, v in {**params, **config.distill.finetune_loss_params}.items() if k in names}
    elif config.protocol == "paper":  # the authors' effective weights (loqi_core.losses.paper)
        from loqi_core.losses.paper import paper_weighting

        expr, params = paper_weighting(expr, params)
    return build_loss(expr, params, plugins)


def check_places(loss: CompositeLoss, train: TrainSet, train_name: str, plugins: Plugins) -> None:
    """A loss that needs places (triplet) cannot train on a label-free training set."""
    if loss.needs_places and train.place_ids is None:
        needing = [n for _, n, _ in loss.terms if plugins.loss(n).needs_places]
        raise ConfigError(
            f'loss "{loss.expression}": {", ".join(needing)} needs places (images grouped by location), but the '
            f'training set "{train_name}" is label-free. Use a loss without it (ickd, mse) or a training set '
            "with positions (@east@north@ file names)"
        )


def select_trainable(model: nn.Module, prefixes: list[str] | tuple[str, ...], method: str) -> list[str]:
    """Freeze every parameter outside ``prefixes`` (empty = train all); returns the trainable names."""
    names = [n for n, _ in model.named_parameters()]
    matches = lambda n: not prefixes or any(n == p or n.startswith(p + ".") for p in prefixes)  # noqa: E731
    for p in prefixes:
        if not any(n == p or n.startswith(p + ".") for n in names):
            tops = sorted({".".join(n.split(".")[:2]) for n in names})
            raise ConfigError(
                f'distill.trainable: "{p}" matches no parameter of "{method}" (its modules: {", ".join(tops[:40])})'
            )
    for n, param in model.named_parameters():
        param.requires_grad_(matches(n))
    return [n for n in names if matches(n)]


def set_train_modes(
    model: nn.Module, prefixes: list[str] | tuple[str, ...], freeze_bn: bool, dropout: bool,
    bn_scope: Literal["trainable", "all"] = "trainable",
) -> None:  # fmt: skip
    """Per-module train/eval flags: normalisation statistics update only when ``freeze_bn`` is off, and then in
    trainable layers only (``bn_scope="trainable"``) or in every layer (``"all"``: the authors' ``model.train()``);
    dropout, drop-path and attention dropout run only when ``dropout`` is on."""
    from torch.nn.modules.batchnorm import _NormBase

    for name, module in model.named_modules():
        if isinstance(module, _NormBase):
            full = name + ".weight"
            trainable = bn_scope == "all" or not prefixes or any(full.startswith(p + ".") or name == p for p in prefixes)
            module.training = trainable and not freeze_bn
        else:
            module.training = dropout


def preprocess_of(config: RunConfig, spec: EncoderSpec) -> Preprocess:
    """The method's preprocessing as ``build_model`` sets it: its own or its protocol's, ``model.image_size``
    overriding the size."""
    pp = spec.preprocess
    if config.protocol in spec.protocols and spec.protocols[config.protocol].preprocess is not None:
        pp = spec.protocols[config.protocol].preprocess
    size = config.model.image_size
    return pp if size is None else pp.model_copy(update={"size": tuple(size)})


def training_views(config: RunConfig, spec: EncoderSpec, train: TrainSet) -> ViewConfig:
    """The view rule of a run: ``distill.view_size`` ("native": each image as it is), else the method's fixed input
    size, else the training images' typical size (``loqi run`` sets ``view_size`` from its test sets first)."""
    d = config.distill
    if d.view_size == "native":
        return ViewConfig(None, False, d.min_crop)
    size = d.view_size or preprocess_of(config, spec).size or typical_size(list(train.images.paths))
    return ViewConfig(tuple(size), d.augment, d.min_crop)  # type: ignore[arg-type]


def mines(config: RunConfig, mode: Mode) -> bool:
    """Whether the run trains on mined tuples: ``distill.mine``, for distillation (finetune trains on place batches)."""
    return config.distill.mine and mode == "distill"


def check_mining(train: TrainSet, train_name: str) -> None:
    """Mined tuples need places (the anchors' batches) and positions (the radii)."""
    if train.place_ids is None or train.images.positions is None:
        raise ConfigError(
            f'distill.mine: the training set "{train_name}" has no places and positions (a label-free folder); the '
            "mined step needs both (@east@north@ file names, GSV-Cities, Pitts250k), or set distill.mine=false"
        )


def build_training_data(
    config: RunConfig, loss: CompositeLoss, spec: EncoderSpec, plugins: Plugins, world_size: int = 1, rank: int = 0,
    train: TrainSet | None = None, mined: Mined | None = None, mode: Mode = "distill",
) -> tuple[TrainSet, BatchPlan, StepDataset]:
    """The training set (``train`` when the caller has loaded it), its batch plan (of ``mined`` tuples when given)
    and the dataset of (clean view, degraded view) batches by step."""
    d = config.distill
    train = train or load_dataset(d.train, "train", root=config.data_root, plugins=plugins)  # type: ignore[assignment]
    assert isinstance(train, TrainSet)
    check_places(loss, train, d.train, plugins)
    if mines(config, mode):
        check_mining(train, d.train)
    plan_cfg = PlanConfig(
        by_places=loss.needs_places or mines(config, mode), places_per_batch=d.places_per_batch,
        images_per_place=d.images_per_place, batch_size=d.batch_size, seed=config.seed, world_size=world_size, rank=rank,
    )  # fmt: skip
    plan = BatchPlan(train, plan_cfg, mined)
    degradation = parse_degradation(config.degrade, plugins)
    return train, plan, StepDataset(train, plan, degradation, training_views(config, spec, train), config.seed)


def check_batch(dataset: StepDataset, pp: Preprocess, step: int = 0) -> dict[str, Any]:
    """Decode one whole training batch through view → degradation → the method's preprocessing, so a broken
    input fails in seconds, before any evaluation or model download; returns the batch."""
    from loqi_core.models.preprocess import preprocess_images

    try:
        batch = dataset[step]
        if "error" in batch:  # an unreadable image (without skip_bad): the loader hands the error over
            raise batch["error"]
        for key in ("clean", "degraded"):
            preprocess_images(batch[key], pp)
    except LoqiError:
        raise
    except Exception as exc:
        raise DataError(f"training batch check ({dataset.degradation.spec} on step {step}'s images): {exc}") from None
    return batch


def preflight(config: RunConfig, mode: Mode = "distill", plugins: Plugins | None = None) -> ViewConfig:
    """What ``loqi run``/``sweep`` check before evaluating anything: the loss, the training set and one decoded
    batch (of anchors: the mined tuples come with the teacher). Returns the training views."""
    plugins = plugins or get_plugins()
    spec = encoder_spec(config, plugins)
    loss = training_loss(config, mode, spec, plugins)
    _, _, dataset = build_training_data(config, loss, spec, plugins, mode=mode)
    check_batch(dataset, preprocess_of(config, spec))
    return dataset.views
