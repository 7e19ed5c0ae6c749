"""A VPR model = a method's preprocessing + encoder (latent map) + aggregator (global descriptor).

``build_model`` is loqi's ``create_model``: ``build_model(method="lite0-gem", weights="official")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import ValidationError
from torch import nn

from loqi_core.errors import ConfigError, PluginLoadError, WeightsError
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.hooks.specs import PROTOCOLS, EncoderSpec, Params, Preprocess, WeightsSpec
from loqi_core.models.checkpoint import checkpoint_file, load_checkpoint
from loqi_core.models.preprocess import preprocess_images
from loqi_core.models.weights import fetch_weights, load_state_dict, unwrap_state_dict


class VPRModel(nn.Module):
    """``forward(x) -> (latent B×C×h×w, descriptor B×D)``; ``prepare(images)`` does the method's preprocessing."""

    recipe: dict[str, Any] | None = None
    """The ``build_model`` arguments it was built from, as config fields take them, so ``distill`` can rebuild it;
    None for a wrapped module (``wrap_model``)."""

    def __init__(self, encoder: nn.Module, aggregator: nn.Module, preprocess: Preprocess, info: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.aggregator = aggregator
        self.preprocess = preprocess
        self.info = info

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        latent = features[0] if isinstance(features, tuple) else features
        return latent, self.aggregator(features)

    def prepare(self, images: torch.Tensor | Sequence[torch.Tensor], device: torch.device | str | None = None) -> torch.Tensor:
        """uint8 RGB images (a B×3×H×W batch or a list of 3×H×W) → the normalised float batch this model eats."""
        return preprocess_images(images, self.preprocess, device)


def _params(model: type[Params], values: dict[str, Any] | None, what: str) -> Params:
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{what}: give a dict of parameters, not {type(values).__name__}")
    try:
        return model(**(values or {}))
    except ValidationError as exc:
        reasons = "; ".join(f"{what}.{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ConfigError(reasons) from None


def build_model(
    method: str | None = None,
    *,
    encoder: str | None = None,
    aggregator: str | None = None,
    encoder_params: dict[str, Any] | None = None,
    aggregator_params: dict[str, Any] | None = None,
    weights: str | Path | None = "default",
    image_size: tuple[int, int] | None = None,
    protocol: str = "upstream",
    seed: int = 0,
    plugins: Plugins | None = None,
) -> VPRModel:
    """Compose a model from registered parts and load its weights.

    ``weights``: ``"default"`` (the method's first declared weights), a declared variant name
    (``"official"``, ``"imagenet"``), ``"random"``, a loqi checkpoint (``.safetensors`` or run directory),
    or any other file in the method's official format. ``protocol`` picks the method's preprocessing under
    that protocol (``"paper"``: as the paper's authors ran it), where the method declares one. ``seed`` seeds the
    parts' random initialisation (default 0, the CLI's ``--seed``), without touching torch's global generator.
    """
    plugins = plugins or get_plugins()
    if method is None and encoder is None:
        raise ConfigError("give a method (--method NAME) or an encoder and an aggregator")
    for what, name in (("method", method), ("encoder", encoder), ("aggregator", aggregator)):
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{what}: give a name (see `loqi plugins`), not {type(name).__name__}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f'protocol: "{protocol}" is not one of {", ".join(PROTOCOLS)}')
    if method is not None:
        enc_spec, agg_spec = plugins.method(method)
        if encoder is not None:
            enc_spec = plugins.encoder(encoder)
        if aggregator is not None:
            agg_spec = plugins.aggregator(aggregator)
    else:
        enc_spec = plugins.encoder(encoder)  # type: ignore[arg-type]
        agg_spec = plugins.aggregator(aggregator or enc_spec.default_aggregator or enc_spec.name)
    enc_p = _params(enc_spec.params, encoder_params, "encoder_params")
    agg_p = _params(agg_spec.params, aggregator_params, "aggregator_params")
    resolved = resolve_weights(enc_spec, weights)  # before building: missing weights cost no work
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = enc_spec.factory(enc_p)
        agg = agg_spec.factory(agg_p, in_channels=_out_channels(enc, enc_spec.name, plugins))
    pp = enc_spec.preprocess
    if protocol in enc_spec.protocols and enc_spec.protocols[protocol].preprocess is not None:
        pp = enc_spec.protocols[protocol].preprocess
    if image_size is not None:
        try:
            pp = Preprocess.model_validate({**pp.model_dump(), "size": image_size})
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"image_size {image_size!r}: {reason} (give (height, width))") from None
    info = {
        "method": method or f"{enc_spec.name}+{agg_spec.name}",
        "encoder": enc_spec.name,
        "aggregator": agg_spec.name,
        "encoder_params": enc_p.model_dump(mode="json"),
        "aggregator_params": agg_p.model_dump(mode="json"),
        "preprocess": pp.model_dump(mode="json"),
        "weights": str(weights),
    }
    model = VPRModel(enc, agg, pp, info)
    model.recipe = {"method": method, "encoder": encoder, "aggregator": aggregator, "encoder_params": encoder_params,
                    "aggregator_params": aggregator_params, "weights": "random" if weights is None else str(weights),
                    "image_size": image_size, "protocol": protocol}  # fmt: skip
    mixed = method is None or (encoder is not None and encoder != method) or (aggregator is not None and aggregator != method)
    _probe(model, plugins, mixed)
    load_weights(model, enc_spec, *resolved)
    return model


class _Descriptor(nn.Module):
    """The aggregator of a wrapped module: the module's output already is the descriptor (or a (latent, descriptor) pair)."""

    def forward(self, features: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return features[1] if isinstance(features, tuple) else features


def wrap_model(module: nn.Module, *, name: str | None = None, **preprocess: Any) -> VPRModel:
    """Your own network as a loqi model, for ``evaluate`` and ``encode`` (not ``distill``: register a method for that).

    ``module(x)`` takes the normalised float batch B×3×H×W and returns descriptors B×D, or a ``(latent, descriptor)``
    pair. ``preprocess``: fields of ``loqi_core.hooks.specs.Preprocess`` (``size=(224, 224)``, ``mean``, ``std``, ...);
    by default each image keeps its size and is normalised with the ImageNet statistics.
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"wrap_model takes a torch.nn.Module, not {type(module).__name__}")
    pp = _params(Preprocess, preprocess, "preprocess")
    cls = type(module)
    info = {
        "method": name or cls.__name__,
        "encoder": f"{cls.__module__}.{cls.__qualname__}",
        "aggregator": "descriptor",
        "encoder_params": {},
        "aggregator_params": {},
        "preprocess": pp.model_dump(mode="json"),
        "weights": "in memory",
        "wrapped": True,
    }
    return VPRModel(module, _Descriptor(), pp, info)


def _out_channels(encoder: nn.Module, name: str, plugins: Plugins) -> int:
    """The encoder's declared channel count, which its aggregator is built for; a missing one names the plugin."""
    channels = getattr(encoder, "out_channels", None)
    if not isinstance(channels, int) or isinstance(channels, bool):
        raise PluginLoadError(
            f'encoder "{name}" of {plugins.encoders.provider(name)}: the module its EncoderSpec.factory returns has no '
            f"integer out_channels (got {channels!r}); set out_channels to the channel count C of the B×C×h×w latent "
            "map its forward returns"
        )
    return channels


def _probe(model: VPRModel, plugins: Plugins, mixed: bool) -> None:
    """One forward pass on a blank image of the input size (224² when the method keeps each image's own size),
    before any weights load: an encoder whose ``out_channels`` is not what it returns, or parts that cannot read
    each other's output, fail here in one line naming the plugin and the field, not inside a run's first batch."""
    training = model.training
    height, width = model.preprocess.size or (224, 224)
    enc, agg = model.info["encoder"], model.info["aggregator"]
    enc_of = f'encoder "{enc}" of {plugins.encoders.provider(enc)}'
    agg_of = f'aggregator "{agg}" of {plugins.aggregators.provider(agg)}'
    try:
        with torch.inference_mode():
            model.eval()
            try:
                features = model.encoder(torch.zeros(1, 3, height, width))
            except Exception as exc:  # noqa: BLE001 - a plugin's own failure, reported with what it was given
                raise PluginLoadError(f"{enc_of} fails on a blank {height}×{width} image: {_reason(exc)}") from None
            latent = features[0] if isinstance(features, tuple) else features
            if not isinstance(latent, torch.Tensor) or latent.dim() != 4:
                shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
                raise PluginLoadError(f"{enc_of} returns {shape}; EncoderSpec.factory's module must return the "
                                      "B×C×h×w latent map (or a tuple led by it)")  # fmt: skip
            if latent.shape[1] != model.encoder.out_channels:
                raise PluginLoadError(
                    f"{enc_of}: its module declares out_channels={model.encoder.out_channels} but returns "
                    f"{latent.shape[1]} channels ({tuple(latent.shape)} for a {height}×{width} image); set out_channels "
                    f"to {latent.shape[1]} in the module its EncoderSpec.factory returns (the aggregator is built for it)"
                )
            try:
                model.aggregator(features)
            except Exception as exc:  # noqa: BLE001 - any failure means the parts do not fit; its text says how
                if mixed:
                    raise ConfigError(
                        f'aggregator "{agg}" cannot take the output of encoder "{enc}" ({_reason(exc)}); mix parts '
                        "that agree on it (`loqi plugins` lists them)"
                    ) from None
                raise PluginLoadError(
                    f'{agg_of} cannot take the output of its method\'s {enc_of} ({tuple(latent.shape)}): {_reason(exc)}'
                ) from None
    finally:
        model.train(training)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _find_variant(spec: EncoderSpec, name: str) -> WeightsSpec | None:
    return next((w for w in spec.weights if w.name == name), None)


def resolve_weights(spec: EncoderSpec, weights: str | Path | None) -> tuple[str, WeightsSpec | None, Path | None]:
    """What ``weights`` names for this encoder, located on disk (a declared variant is fetched: cache or download).

    Returns ``(kind, variant, path)`` with kind ``random``, ``variant``, ``checkpoint`` (a loqi checkpoint) or
    ``file`` (a file in the method's official format); raises ``WeightsError`` when nothing is there.
    """
    if weights in (None, "random"):
        return "random", None, None
    weights = str(weights)
    if weights == "default":
        if not spec.weights:
            raise WeightsError(f'method "{spec.name}" declares no pretrained weights; pass --weights random or a file')
        weights = spec.weights[0].name
    variant = _find_variant(spec, weights)
    if variant is not None:
        return "variant", variant, fetch_weights(variant)
    path = Path(weights)
    if path.is_dir() or path.suffix == ".safetensors" or path.with_suffix(".json").exists():
        return "checkpoint", None, checkpoint_file(path)
    if not path.exists():
        names = ", ".join(w.name for w in spec.weights) or "none declared"
        raise WeightsError(f'weights "{weights}" is neither a file nor a variant of "{spec.name}" ({names}, random)')
    return "file", _find_variant(spec, "official") or (spec.weights[0] if spec.weights else None), path


def load_weights(model: VPRModel, spec: EncoderSpec, kind: str, variant: WeightsSpec | None, path: Path | None) -> None:
    """Fill ``model`` with the weights ``resolve_weights`` located; every load is strict."""
    if kind == "random":
        model.info["weights"] = "random"
        return
    if kind == "checkpoint":
        load_checkpoint(model, path)  # type: ignore[arg-type]
        return
    state = load_state_dict(path)  # type: ignore[arg-type]
    model.info["weights"] = variant.name if kind == "variant" else str(path)  # type: ignore[union-attr]
    state = unwrap_state_dict(state)
    if variant is not None and variant.convert is not None:
        state = variant.convert(state)
    scope = variant.scope if variant is not None else "model"
    target = model.encoder if scope == "encoder" else model
    what = f'weights "{model.info["weights"]}" do not fit method "{spec.name}"'
    try:  # strict, as the check below makes it, with the keys left over named briefly
        keys = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes
        raise WeightsError(f"{what}: {str(exc)[:1000]}") from None
    if keys.missing_keys or keys.unexpected_keys:
        raise WeightsError(f"{what}: {_key_mismatch(sorted(keys.missing_keys), sorted(keys.unexpected_keys), scope)}")


def _key_mismatch(missing: list[str], unexpected: list[str], scope: str) -> str:
    """Counts and the first few names of the keys that differ, and what the WeightsSpec's convert should return."""
    first = lambda keys: ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")  # noqa: E731
    parts = [f"{len(keys)} {kind} (first: {first(keys)})"
             for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]  # fmt: skip
    if scope == "encoder":
        hint = ('WeightsSpec(scope="encoder") loads into the encoder itself: its convert must return the encoder\'s own '
                'keys, without an "encoder." prefix')  # fmt: skip
        if unexpected and all(k.startswith("encoder.") for k in unexpected):
            hint = f'the unexpected keys start with "encoder.": {hint}'
    else:
        hint = ('WeightsSpec(scope="model") loads into the whole model: its convert must return keys starting with '
                '"encoder." and "aggregator."')  # fmt: skip
    return f"{'; '.join(parts)}. {hint}"
