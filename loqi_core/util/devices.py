"""Device names: the one place that checks a name's syntax (config files and flags) and turns it into a
``torch.device`` this machine has, with one clear error line when it lacks it; and the TF32 switch of CUDA math."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from loqi_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


def check_device_name(name: str) -> str:
    """The syntax of a device name (whether this machine has it is checked by ``resolve_device``)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f'"{name}" is not a device ({DEVICE_FORMS})')
    return name


def resolve_device(name: "str | torch.device | None" = "auto") -> "torch.device":
    """``auto`` (or None) → ``cuda`` when available, else ``cpu``; a device this machine lacks is a ``ConfigError``."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_device_name(str(name))
        device = torch.device(name)
    except (ValueError, RuntimeError, TypeError):
        raise ConfigError(f'device: "{name}" is not a device ({DEVICE_FORMS})') from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f'device: "{name}" asked for, but CUDA is not available here (no CUDA device is visible); '
                "use --device cpu or auto"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f'device: "{name}" asked for, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}')
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f'device: "{name}" asked for, but MPS is not available here; use --device cpu or auto')
    return device


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Inside, with ``enabled``: TF32 matrix products and cuDNN convolutions on CUDA (the LoQI-VPR authors' trainer
    sets both); the previous flags come back on exit. Off: the flags are left as they are."""
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
