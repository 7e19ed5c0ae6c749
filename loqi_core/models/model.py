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
from loqi_core.util.fileio import save_safetensors, write_text
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.hooks.specs import EncoderSpec, Params, Preprocess, WeightsSpec
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


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def _center_crop(x: torch.Tensor, h: int, w: int, rounding: str = "loqi") -> torch.Tensor:
    """The centred h×w window; torchvision rounding places it at round((H−h)/2) (half to even), loqi floors."""
    dh, dw = x.shape[-2] - h, x.shape[-1] - w
    top, left = (int(round(dh / 2.0)), int(round(dw / 2.0))) if rounding == "torchvision" else (dh // 2, dw // 2)
    return x[..., top : top + h, left : left + w]


def _fit_long_side(h: int, w: int, side: int, rounding: str) -> tuple[int, int]:
    if rounding == "torchvision":  # the authors' downscale: the long side exactly, the other int(other·side/long)
        return (side, int(w * side / h)) if h >= w else (int(h * side / w), side)
    s = side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _geometry(x: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    h, w = x.shape[-2:]
    aa, rnd = pp.antialias, pp.rounding
    if pp.max_side and max(h, w) > pp.max_side:
        x = _resize(x, _fit_long_side(h, w, pp.max_side, rnd), pp.interpolation, aa)
    elif pp.min_side and min(h, w) < pp.min_side:
        s = pp.min_side / min(h, w)
        x = _resize(x, (round(h * s), round(w * s)), pp.interpolation, aa)
    m = pp.multiple_of
    if pp.size is not None and pp.mode == "resize":
        x = _resize(x, pp.size, pp.interpolation, aa)
    elif pp.mode == "center_crop":
        h, w = x.shape[-2:]
        if pp.size is None:
            side = max(m, min(h, w) // m * m) if rnd == "torchvision" else min(h, w)
            x = _center_crop(x, side, side, rnd)
        else:
            s = max(pp.size[0] / h, pp.size[1] / w)
            x = _resize(x, (max(pp.size[0], round(h * s)), max(pp.size[1], round(w * s))), pp.interpolation, aa)
            x = _center_crop(x, *pp.size, rnd)
    if m > 1:
        h, w = x.shape[-2:]
        x = _center_crop(x, max(m, h // m * m), max(m, w // m * m), rnd)
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
    protocol: str = "upstream",
    plugins: Plugins | None = None,
) -> VPRModel:
    """Compose a model from registered parts and load its weights.

    ``weights``: ``"default"`` (the method's first declared weights), a declared variant name
    (``"official"``, ``"imagenet"``), ``"random"``, a loqi checkpoint (``.safetensors`` or run directory),
    or any other file in the method's official format. ``protocol`` picks the method's preprocessing under
    that protocol (``"paper"``: as the paper's authors ran it), where the method declares one.
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
    resolved = resolve_weights(enc_spec, weights)  # before building: missing weights cost no work
    enc = enc_spec.factory(enc_p)
    agg = agg_spec.factory(agg_p, in_channels=enc.out_channels)
    pp = enc_spec.preprocess
    if protocol in enc_spec.protocols and enc_spec.protocols[protocol].preprocess is not None:
        pp = enc_spec.protocols[protocol].preprocess
    if image_size is not None:
        pp = pp.model_copy(update={"size": tuple(image_size)})
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
    if mixed:
        _check_parts_fit(model)
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


def _check_parts_fit(model: VPRModel) -> None:
    """Parts of different methods: one forward pass on two blank images of the input size (224² when the method
    keeps the image's own size), so an aggregator that cannot read this encoder's output fails here, in one line,
    instead of inside the first batch of a run."""
    import torch

    training = model.training
    height, width = model.preprocess.size or (224, 224)
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(2, 3, height, width))
    except Exception as exc:  # noqa: BLE001 - any failure means the parts do not fit; its text says how
        raise ConfigError(
            f'aggregator "{model.info["aggregator"]}" cannot take the output of encoder "{model.info["encoder"]}" '
            f"({type(exc).__name__}: {str(exc)[:300]}); mix parts that agree on it (`loqi plugins` lists them)"
        ) from None
    finally:
        model.train(training)


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
    target = model.encoder if variant is not None and variant.scope == "encoder" else model
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f'weights "{model.info["weights"]}" do not fit method "{spec.name}": {str(exc)[:2000]}') from None


CHECKPOINT_FILE = "model.safetensors"


def save_checkpoint(model: VPRModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` (what the model is) atomically; returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={"method": model.info["method"]})
    write_text(path.with_suffix(".json"), json.dumps({**model.info, **(extra or {})}, indent=2))
    return path


def checkpoint_file(path: str | Path) -> Path:
    """The weights file of a loqi checkpoint, with its sidecar: the ``.safetensors`` file, its folder, a training
    directory (``loqi distill``: ``checkpoints/final``) or a run directory (``loqi run``: its ``distill/`` student).
    ``build_model(weights=...)`` and every command's ``--weights`` resolve through here."""
    path = Path(path)
    if path.is_dir():
        final = Path("checkpoints", "final", CHECKPOINT_FILE)
        candidates = [path / CHECKPOINT_FILE, path / final, path / "distill" / final]
        found = next((c for c in candidates if c.exists()), None)
        students = sorted(p.name for p in path.glob("distill-*") if (p / "checkpoints" / "final").is_dir())
        if found is None and students:  # a sweep: one student per loss
            options = ", ".join(str(path / s) for s in students)
            raise WeightsError(f"{path} is a sweep with one student per loss; pass one of them as weights: {options}")
        path = found or candidates[0]
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        raise WeightsError(f"no loqi checkpoint at {path} (expected {path.name} and {sidecar.name})")
    return path


def load_checkpoint(model: VPRModel, path: str | Path, *, verified: bool = False) -> dict[str, Any]:
    """Load a loqi checkpoint (file or run directory) into ``model``; refuses one of another method or a damaged one.
    ``verified``: the caller has already checked the checkpoint's digests (a resume checks every file at once)."""
    path = checkpoint_file(path)
    sidecar = path.with_suffix(".json")
    if not verified and (path.parent / "digests.json").exists():  # a training checkpoint: files checked by digest
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
