"""Pretrained weights: download once (torch's downloader, retried) into a cache, reuse torch.hub's copy of the same
file, check the sha256 where one is known, load safely; offline, say where the file goes."""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.error
import urllib.parse
from pathlib import Path
from typing import Any

from loqi_core.errors import WeightsError
from loqi_core.hooks.specs import WeightsSpec

RETRIES = 3
"""Download attempts before giving up (torch's downloader neither retries nor resumes: each attempt starts over)."""
RETRY_WAIT = 2.0
"""Seconds before the second attempt, doubled before each further one."""
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
"""torch.hub's naming convention ``name-<first hex digits of the sha256>.ext`` (torchvision's ``resnet50-0676ba61.pth``)."""


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


def hub_path(spec: WeightsSpec) -> Path | None:
    """Where ``torch.hub.load_state_dict_from_url(spec.url)`` keeps the same file: ``$TORCH_HOME/hub/checkpoints/``
    plus the URL's file name (official DINOv2 and torchvision weights a user already has land there)."""
    import torch.hub

    if spec.url is None:
        return None
    name = Path(urllib.parse.urlparse(spec.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name if name else None


def expected_sha256(spec: WeightsSpec) -> str | None:
    """The pinned sha256, else the leading hex digits a torch.hub-style URL file name carries, else None (unchecked)."""
    if spec.sha256:
        return spec.sha256
    found = HASH_IN_NAME.search(Path(urllib.parse.urlparse(spec.url or "").path).name)
    return found.group(1) if found else None


def local_weights(spec: WeightsSpec) -> Path | None:
    """The file already on this machine for a downloadable spec: loqi's cache, else torch.hub's copy (not hashed)."""
    for path in (weights_path(spec), hub_path(spec)):
        if path is not None and path.exists():
            return path
    return None


def fetch_weights(spec: WeightsSpec) -> Path:
    """The local file of a weights spec: package-provided, cached, torch.hub's copy of the same file, or downloaded.

    A file is checked against ``expected_sha256`` when one is known (on download and on every load); weights
    without a pinned hash or a hash in their URL's name are not checked.
    """
    if spec.locate is not None:
        return spec.locate()
    path = weights_path(spec)
    if path.exists():
        _verify(path, spec)
        return path
    hub = hub_path(spec)
    if hub is not None and hub.exists() and _matches(hub, spec):
        return hub
    where = spec.url or spec.manual or "the method's release page"
    if offline() or spec.url is None:
        also = f" or at {hub}, where torch.hub keeps it" if hub is not None else ""
        raise WeightsError(
            f'weights "{spec.filename}" are not in the cache. Download them from {where} '
            f"and put the file at {path}{also} (or pass --weights /path/to/file)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _download(spec.url, path, expected_sha256(spec))
    return path


def _download(url: str, path: Path, sha256: str | None) -> None:
    """``torch.hub.download_url_to_file`` (a temporary file, moved into place only when complete and matching
    ``sha256``), retried ``RETRIES`` times on network errors; a missing URL or a wrong hash is not retried."""
    import torch.hub

    wait = RETRY_WAIT
    for attempt in range(1, RETRIES + 1):
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=sha256, progress=True)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == RETRIES:
                raise WeightsError(f"could not download {url}: {exc}. Put the file at {path} by hand.") from None
        except RuntimeError as exc:  # torch's "invalid hash value"
            raise WeightsError(f"{url} is not the expected file: {exc}") from None
        except OSError as exc:  # URLError, connection reset, timeout
            if attempt == RETRIES:
                raise WeightsError(
                    f"could not download {url} ({RETRIES} attempts): {exc}. Put the file at {path} by hand."
                ) from None
        time.sleep(wait)
        wait *= 2


def _matches(path: Path, spec: WeightsSpec) -> bool:
    expected = expected_sha256(spec)
    return expected is None or sha256_of(path).startswith(expected)


def _verify(path: Path, spec: WeightsSpec) -> None:
    if not _matches(path, spec):
        raise WeightsError(
            f"{path} does not match the expected sha256 (starting {expected_sha256(spec)}); delete it and download again."
        )


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

