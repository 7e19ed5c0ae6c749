"""The Python API's entry points: ``encode``, ``evaluate`` and ``distill`` taking what a notebook has (a model or a
method name, a dataset name or folder, a degradation spec), over the same engines the CLI runs.

    teacher = build_model("lite0-gem")
    paths, descriptors = encode(teacher, "photos/")
    before = evaluate(teacher, "demo", "jpeg10")
    student = distill("lite0-gem", "jpeg10", train="demo", out="runs/notebook")
    after = evaluate(student, "demo", "jpeg10")
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, NamedTuple, Sequence

import numpy as np

from loqi_core.config import EvalConfig, resolve_run_config, validate
from loqi_core.errors import ConfigError, DataError
from loqi_core.hooks.manager import Plugins, get_plugins

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.data.sets import TestSet
    from loqi_core.degrade.base import Degradation
    from loqi_core.evaluation.cache import EvalCache
    from loqi_core.evaluation.results import EvalResult
    from loqi_core.models.model import VPRModel


class Encoded(NamedTuple):
    """What ``encode`` returns: the image paths and their descriptors, row ``i`` for ``paths[i]``."""

    paths: list[Path]
    descriptors: np.ndarray
    """N×D float32, each row L2-normalised."""


def _model(model: "VPRModel | str", plugins: Plugins) -> "VPRModel":
    """A method name becomes that method with its default weights; a model is taken as it is."""
    from loqi_core.models.model import VPRModel, build_model

    if isinstance(model, str):
        return build_model(model, plugins=plugins)
    if not isinstance(model, VPRModel):
        raise ConfigError(
            f"model: give a method name or a model from build_model, not {type(model).__name__} "
            "(wrap your own torch module with loqi_core.wrap_model)"
        )
    return model


def _eval_config(settings: dict[str, Any], cache: bool | None, model: "VPRModel", seed: int) -> EvalConfig:
    """``settings`` (EvalConfig fields; None = its default) and ``seed`` validated as ``loqi eval`` validates them;
    ``cache=None`` caches every model but a wrapped one, whose code (not only its weights) may change between two
    calls."""
    if cache is None:
        cache = not model.info.get("wrapped", False)
    given = {key: value for key, value in settings.items() if value is not None}
    return validate({"eval": {**given, "cache": cache}, "seed": seed}).eval


def _degradation(degrade: "str | Degradation", plugins: Plugins) -> "Degradation":
    """A spec string parsed as ``--degrade`` is (anything else refused by the parser), or a ``Degradation`` as it is."""
    from loqi_core.degrade.base import Degradation
    from loqi_core.degrade.grammar import parse_degradation

    return degrade if isinstance(degrade, Degradation) else parse_degradation(degrade, plugins)


@contextlib.contextmanager
def _cache_for(config: EvalConfig) -> Iterator["EvalCache"]:
    """The evaluation cache; with caching off, its scratch folder goes when the call ends, not at exit."""
    from loqi_core.evaluation.cache import EvalCache

    store = EvalCache(config.cache_dir, enabled=config.cache)
    try:
        yield store
    finally:
        if not config.cache:
            shutil.rmtree(store.root, ignore_errors=True)


def _device(device: "str | torch.device") -> "torch.device":
    import torch

    from loqi_core.evaluation.engine import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


def _image_paths(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A folder → its images recursively, sorted by path (as ``folder:`` datasets list them); a file → itself;
    a list → that list, in its order."""
    from loqi_core.data.folders import list_images

    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        if path.is_file():
            return [path]
        return list_images(path)
    if not isinstance(images, Sequence):
        raise ConfigError(f"images: give a folder, an image file or a list of image files, not {type(images).__name__}")
    wrong = next((p for p in images if not isinstance(p, (str, os.PathLike))), None)
    if wrong is not None:
        raise ConfigError(f"images: every item must be an image file's path, not {type(wrong).__name__} ({wrong!r})")
    paths = [Path(p).expanduser() for p in images]
    if not paths:
        raise DataError("encode: the list of images is empty")
    return paths


def encode(
    model: "VPRModel | str",
    images: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    degrade: "str | Degradation" = "none",
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: "str | torch.device" = "auto",
    seed: int = 0,
    cache: bool | None = None,
    plugins: Plugins | None = None,
    **settings: Any,
) -> Encoded:
    """Descriptors of a folder of images (recursively, sorted by path) or of a list of image paths (in its order).

    One call through the evaluation engine's own extraction (``loqi_core.evaluation.engine.extract``): the model's
    preprocessing, bf16 autocast on CUDA, loader workers, the descriptor cache shared with ``evaluate``. ``degrade``
    degrades each image first (``"jpeg10"``). ``batch_size``, ``num_workers`` (None: 32, and as many workers as the CPUs allow, as ``loqi eval``)
    and ``settings``, the other extraction fields of ``EvalConfig`` (``precision``, ``cache_dir``), as in
    ``evaluate``. The model is moved to ``device`` and put in eval mode.
    """
    from loqi_core.data.sets import ImageList
    from loqi_core.evaluation.engine import descriptor_key, extract
    from loqi_core.util.cpus import loader_workers

    plugins = plugins or get_plugins()
    model = _model(model, plugins)
    paths = _image_paths(images)
    config = _eval_config({"batch_size": batch_size, "num_workers": num_workers, **settings}, cache, model, seed)
    deg = _degradation(degrade, plugins)
    dev = _device(device)
    model = model.to(dev).eval()
    with _cache_for(config) as store:
        descriptors = extract(
            model, ImageList(paths), deg, cache=store, key=descriptor_key(model, config.precision, dev, plugins),
            seed=seed, device=dev, batch_size=config.batch_size, num_workers=loader_workers(config.num_workers, dev.type),
            precision=config.precision, cache_images=config.cache_images, label="encode", plugins=plugins,
        )  # fmt: skip
        return Encoded(paths, np.array(descriptors, dtype=np.float32))


def _test_set(dataset: "str | os.PathLike | TestSet", data_root: str | os.PathLike | None, plugins: Plugins) -> "TestSet":
    from loqi_core.data.datasets import load_dataset
    from loqi_core.data.sets import TestSet

    if isinstance(dataset, TestSet):
        return dataset
    if not isinstance(dataset, (str, os.PathLike)):
        raise ConfigError(f'dataset: give a name such as "demo" or "folder:PATH", a pathlib.Path to a folder or a '
                          f"TestSet, not {type(dataset).__name__}")  # fmt: skip
    text = dataset if isinstance(dataset, str) else f'folder:"{Path(dataset)}"'
    return load_dataset(text, "test", root=data_root, plugins=plugins)  # type: ignore[return-value]


def evaluate(
    model: "VPRModel | str",
    dataset: "str | os.PathLike | TestSet" = "demo",
    degrade: "str | Degradation" = "none",
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: "str | torch.device" = "auto",
    seed: int = 0,
    cache: bool | None = None,
    data_root: str | os.PathLike | None = None,
    plugins: Plugins | None = None,
    **settings: Any,
) -> "EvalResult":
    """Recall@N of ``model`` on one test set with database and queries degraded by ``degrade`` (the paper's protocol).

    ``model``: a model (``build_model``, ``wrap_model``) or a method name (its default weights). ``dataset``: a
    name as ``loqi eval --dataset`` takes it (``"demo"``, ``"nordland"``, ``"folder:PATH?skip_bad=true"``), a
    ``pathlib.Path`` to a folder in gmberton's layout, or a loaded ``TestSet``. ``batch_size``, ``num_workers``
    (None: 32, and workers fitted to the CPUs) and ``settings``, any other ``EvalConfig`` field (``recall=[1, 5]``, ``clean_database=True``,
    ``index="ivfpq"``), as ``loqi eval`` takes them. Returns the
    ``EvalResult``: ``.recalls`` (``{"R@1": ...}``), ``.predictions``, ``.protocol``.
    """
    from loqi_core.evaluation.engine import evaluate as evaluate_test_set

    plugins = plugins or get_plugins()
    model = _model(model, plugins)
    config = _eval_config({"batch_size": batch_size, "num_workers": num_workers, **settings}, cache, model, seed)
    deg = _degradation(degrade, plugins)
    test = _test_set(dataset, data_root, plugins)
    with _cache_for(config) as store:
        result = evaluate_test_set(model, test, deg, config=config, seed=seed, device=_device(device), cache=store,
                                   plugins=plugins)  # fmt: skip
    assert result is not None  # None only on the ranks other than 0 of a torchrun job
    return result


def _model_overrides(model: "VPRModel | str") -> dict[str, Any]:
    """The config fields that name ``model``: a method name, or the recipe and weights a built model records."""
    from loqi_core.models.model import VPRModel

    if isinstance(model, str):
        return {"model.method": model}
    if not isinstance(model, VPRModel) or model.recipe is None:
        raise ConfigError(
            "distill: give a method name or a model from build_model; a wrapped module has no teacher recipe "
            "(register it as a method to distil it: docs/python-api.md)"
        )
    r = model.recipe
    fields = {"model.method": r["method"], "model.encoder": r["encoder"], "model.aggregator": r["aggregator"],
              "model.encoder_params": r["encoder_params"], "model.aggregator_params": r["aggregator_params"],
              "model.image_size": list(r["image_size"]) if r["image_size"] else None, "protocol": r["protocol"],
              "model.weights": r["weights"]}  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None}


def distill(
    model: "VPRModel | str",
    degrade: str | None = None,
    *,
    train: str | None = None,
    loss: str | None = None,
    out: str | os.PathLike | None = None,
    mode: Literal["distill", "finetune"] = "distill",
    resume: bool | None = None,
    config: str | os.PathLike | None = None,
    seed: int | None = None,
    device: str | None = None,
    data_root: str | os.PathLike | None = None,
    plugins: Plugins | None = None,
    **settings: Any,
) -> "VPRModel":
    """Distil ``model`` against ``degrade`` on ``train`` as ``loqi distill`` does; returns the student, loaded.

    ``model``: a method name or a model from ``build_model`` (teacher and student are rebuilt from the arguments it
    was built with, weights included; changes made to its parameters in memory are not seen). ``degrade``, ``train``, ``loss``, ``seed``,
    ``device``: as the CLI flags, default the config's (jpeg10, demo, the method's best loss). ``settings``: any
    ``DistillConfig`` field (``lr=2e-4``, ``max_steps=120``, ``view_size=(32, 64)``); ``config``: a TOML/YAML file
    under them; the method's own defaults lie under both. ``out``: the run directory (default
    ``runs/distill-<method>-<degrade>-<time>``); ``resume=None`` continues the run already in ``out``, if any, else
    starts one. The student's ``info["weights"]`` is its final checkpoint.
    """
    from loqi_core.experiments.runner import default_run_dir
    from loqi_core.models.model import build_model
    from loqi_core.training.engine import distill as run_distillation

    plugins = plugins or get_plugins()
    loss_field = "distill.finetune_loss" if mode == "finetune" else "distill.loss"
    given = {"degrade": degrade, "distill.train": train, loss_field: loss, "seed": seed, "device": device,
             "data_root": str(data_root) if data_root is not None else None,
             **{f"distill.{key}": value for key, value in settings.items()}}  # fmt: skip
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out: give the run directory's path, not {type(out).__name__}")
    overrides = {**_model_overrides(model), **{k: v for k, v in given.items() if v is not None}}
    run_config = resolve_run_config(config, overrides, plugins)
    out = Path(out) if out is not None else default_run_dir(mode, run_config)
    resume = (out / "config.json").exists() if resume is None else resume
    final = run_distillation(run_config, out, mode=mode, resume=resume, plugins=plugins)
    m = run_config.model
    return build_model(m.method, encoder=m.encoder, aggregator=m.aggregator, encoder_params=m.encoder_params,
                       aggregator_params=m.aggregator_params, weights=str(final), image_size=m.image_size,
                       protocol=run_config.protocol, plugins=plugins)  # fmt: skip
