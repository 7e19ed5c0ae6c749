"""Pretrained weights: download once into a cache, check sha256, load safely; offline, say where the file goes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from loqi_core.errors import WeightsError
from loqi_core.specs import WeightsSpec


def cache_dir() -> Path:
    """``$LOQI_CACHE``, else ``~/.cache/loqi``."""
    return Path(os.environ.get("LOQI_CACHE") or Path.home() / ".cache" / "loqi")


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("LOQI_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_path(spec: WeightsSpec) -> Path:
    return cache_dir() / "weights" / spec.filename


def fetch_weights(spec: WeightsSpec) -> Path:
    """The local file of a weights spec: package-provided, cached, or downloaded (then sha256-checked)."""
    if spec.locate is not None:
        return spec.locate()
    path = weights_path(spec)
    if path.exists():
        _verify(path, spec)
        return path
    where = spec.url or spec.manual or "the method's release page"
    if offline() or spec.url is None:
        raise WeightsError(
            f'weights "{spec.filename}" are not in the cache. Download them from {where} '
            f"and put the file at {path} (or pass --weights /path/to/file)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url, timeout=60) as resp:
            _copy_with_progress(resp, out, int(resp.headers.get("Content-Length") or 0), spec.filename)
        _verify(Path(tmp), spec)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"could not download {spec.url}: {exc}. Put the file at {path} by hand.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _copy_with_progress(src: Any, dst: Any, total: int, label: str) -> None:
    from loqi_core.progress import progress

    with progress(total=total or None, unit="B", unit_scale=True, desc=label) as bar:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            bar.update(len(block))


def _verify(path: Path, spec: WeightsSpec) -> None:
    if spec.sha256 and sha256_of(path) != spec.sha256:
        raise WeightsError(f"{path} does not match the expected sha256 {spec.sha256}; delete it and download again.")


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state dict: safetensors, or a torch pickle with ``weights_only=True`` (never arbitrary code)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except OSError:
            raise
        except Exception as exc:
            raise WeightsError(f"cannot read {path}: not a complete safetensors file ({str(exc)[:200]})") from None
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:
        raise WeightsError(_unsafe_load_message(path, exc)) from None


def _unsafe_load_message(path: Path, exc: Exception) -> str:
    """Why a torch file did not load, without torch's advice to load it with ``weights_only=False`` (runs code)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found or "Weights only load failed" in str(exc):
        what = f"the Python object {found.group(1)}" if found else "Python objects"
        return (
            f"cannot load {path} safely: it holds {what}, not only tensors, and loqi loads torch files with "
            "weights_only=True (no code runs). Save its state_dict() as safetensors instead"
        )
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"cannot load {path} (weights_only=True): not a readable torch or safetensors file ({reason[:200]})"


def _numpy_scalar_globals() -> list[Any]:
    """Numpy scalar and dtype classes: plain data that many official checkpoints carry in their metadata
    (pytorch-NetVlad stores ``recalls`` and ``best_score`` as numpy floats); allowing them runs no code."""
    import numpy as np

    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    numpy2 = hasattr(np, "_core")  # numpy 2 renamed numpy.core to numpy._core
    scalar = (np._core if numpy2 else np.core).multiarray.scalar
    other = "numpy.core.multiarray.scalar" if numpy2 else "numpy._core.multiarray.scalar"
    return [scalar, (scalar, other), np.dtype, *dtypes]  # pickles from numpy 1 and numpy 2 name it differently


def unwrap_state_dict(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The tensors of a checkpoint: looks inside ``state_dict``/``model_state_dict`` and strips ``prefix``."""
    for key in ("state_dict", "model_state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    return {k[len(prefix):] if prefix and k.startswith(prefix) else k: v for k, v in obj.items()}

