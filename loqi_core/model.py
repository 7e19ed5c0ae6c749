"""A VPR model = a method's preprocessing + encoder (latent map) + aggregator (global descriptor).

``build_model`` is loqi's ``create_model``: ``build_model(method="lite0-gem", weights="official")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from loqi_core.errors import ConfigError, WeightsError
from loqi_core.plugins import Plugins, get_plugins
from loqi_core.specs import EncoderSpec, Params, Preprocess, WeightsSpec
from loqi_core.weights import fetch_weights, load_state_dict, unwrap_state_dict


class VPRModel(nn.Module):
    """``forward(x) -> (latent B×C×h×w, descriptor B×D)``; ``prepare(images)`` does the method's preprocessing."""

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


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def _geometry(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    h, w = x.shape[-2:]
    if pp.max_side and max(h, w) > pp.max_side:
        s = pp.max_side / max(h, w)
        x = _resize(x, (max(1, round(h * s)), max(1, round(w * s))), pp.interpolation)
    elif pp.min_side and min(h, w) < pp.min_side:
        s = pp.min_side / min(h, w)
        x = _resize(x, (round(h * s), round(w * s)), pp.interpolation)
    if pp.size is not None and pp.mode == "resize":
        x = _resize(x, pp.size, pp.interpolation)
    elif pp.mode == "center_crop":
        h, w = x.shape[-2:]
        if pp.size is None:
            x = _center_crop(x, min(h, w), min(h, w))
        else:
            s = max(pp.size[0] / h, pp.size[1] / w)
            x = _resize(x, (max(pp.size[0], round(h * s)), max(pp.size[1], round(w * s))), pp.interpolation)
            x = _center_crop(x, *pp.size)
    m = pp.multiple_of
    if m > 1:
        h, w = x.shape[-2:]
        x = _center_crop(x, max(m, h // m * m), max(m, w // m * m))
    return x


def preprocess_images(
    images: torch.Tensor | Sequence[torch.Tensor], pp: Preprocess, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 → float on ``device`` (bytes move, not floats) → geometry → ImageNet-style normalisation."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        batch = _geometry(images.to(device, non_blocking=True).float().div_(255), pp)
    else:
        parts = [_geometry(img.to(device, non_blocking=True)[None].float().div_(255), pp) for img in images]
        shapes = {tuple(p.shape[-2:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes {sorted(shapes)} cannot share a batch without a fixed input size")
        batch = torch.cat(parts)
    for c in range(3):  # python scalars: no host-to-device copy, so no sync in the training step
        batch[:, c].sub_(pp.mean[c]).div_(pp.std[c])
    return batch


def _params(model: type[Params], values: dict[str, Any] | None, what: str) -> Params:
    try:
        return model(**(values or {}))
    except ValidationError as exc:
        reasons = "; ".join(f"{what}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
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
    plugins: Plugins | None = None,
) -> VPRModel:
    """Compose a model from registered parts and load its weights.

    ``weights``: ``"default"`` (the method's first declared weights), a declared variant name
    (``"official"``, ``"imagenet"``), ``"random"``, a loqi checkpoint (``.safetensors`` or run directory),
    or any other file in the method's official format.
    """
    plugins = plugins or get_plugins()
    if method is None and encoder is None:
        raise ConfigError("give a method (--method NAME) or an encoder and an aggregator")
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
    enc = enc_spec.factory(enc_p)
    agg = agg_spec.factory(agg_p, in_channels=enc.out_channels)
    pp = enc_spec.preprocess if image_size is None else enc_spec.preprocess.model_copy(update={"size": tuple(image_size)})
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
    load_weights(model, enc_spec, weights)
    return model


def _find_variant(spec: EncoderSpec, name: str) -> WeightsSpec | None:
    return next((w for w in spec.weights if w.name == name), None)


def load_weights(model: VPRModel, spec: EncoderSpec, weights: str | Path | None) -> None:
    """Fill ``model`` with the named weights (see ``build_model``); every load is strict."""
    if weights in (None, "random"):
        model.info["weights"] = "random"
        return
    weights = str(weights)
    if weights == "default":
        if not spec.weights:
            raise WeightsError(f'method "{spec.name}" declares no pretrained weights; pass --weights random or a file')
        weights = spec.weights[0].name
    variant = _find_variant(spec, weights)
    if variant is not None:
        state = load_state_dict(fetch_weights(variant))
        model.info["weights"] = variant.name
    else:
        path = Path(weights)
        if path.is_dir() or path.suffix == ".safetensors" or path.with_suffix(".json").exists():
            load_checkpoint(model, path)
            return
        if not path.exists():
            names = ", ".join(w.name for w in spec.weights) or "none declared"
            raise WeightsError(f'weights "{weights}" is neither a file nor a variant of "{spec.name}" ({names}, random)')
        variant = _find_variant(spec, "official") or (spec.weights[0] if spec.weights else None)
        state = load_state_dict(path)
        model.info["weights"] = str(path)
    state = unwrap_state_dict(state)
    if variant is not None and variant.convert is not None:
        state = variant.convert(state)
    target = model.encoder if variant is not None and variant.scope == "encoder" else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f'weights "{weights}" do not fit method "{spec.name}": {str(exc)[:2000]}') from None


CHECKPOINT_FILE = "model.safetensors"


def save_checkpoint(model: VPRModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (what the model is) atomically; returns the weights path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"method": model.info["method"]})
    tmp.replace(path)
    sidecar = path.with_suffix(".json")
    tmp_json = sidecar.with_name(sidecar.name + ".tmp")
    tmp_json.write_text(json.dumps({**model.info, **(extra or {})}, indent=2))
    tmp_json.replace(sidecar)
    return path


def load_checkpoint(model: VPRModel, path: str | Path) -> dict[str, Any]:
    """Load a loqi checkpoint (file or run directory) into ``model``; refuses one of another method."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / CHECKPOINT_FILE, path / "checkpoints" / "final" / CHECKPOINT_FILE]
        path = next((c for c in candidates if c.exists()), candidates[0])
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        raise WeightsError(f"no loqi checkpoint at {path} (expected {path.name} and {sidecar.name})")
    if (path.parent / "digests.json").exists():  # a training checkpoint: every file is checked against its digest
        from loqi_core.training.state import verify

        reason = verify(path.parent, required=(path.name, sidecar.name))
        if reason is not None:
            raise WeightsError(f"checkpoint {path.parent} is damaged: {reason}")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{sidecar}: unreadable checkpoint description ({type(exc).__name__}: {exc})") from None
    for key in ("encoder", "aggregator"):
        if meta.get(key) != model.info[key]:
            raise WeightsError(
                f"{path} is a checkpoint of {key} \"{meta.get(key)}\" (method \"{meta.get('method')}\"), "
                f"but the model uses {key} \"{model.info[key]}\""
            )
    try:
        state = load_state_dict(path)
    except WeightsError:
        raise
    except Exception as exc:  # a truncated or garbled safetensors file
        raise WeightsError(f"{path}: unreadable weights ({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit the model: {str(exc)[:2000]}") from None
    model.info["weights"] = str(path)
    return meta
