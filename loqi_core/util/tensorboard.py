"""An optional TensorBoard ``SummaryWriter``: the package is not a dependency. By default a run logs there when it is
installed and says nothing when it is not; a run that asked for it (``distill.tensorboard=true``) is told, once."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

_said_missing = False

MISSING = ("TensorBoard logging was asked for (distill.tensorboard=true) but the tensorboard package is not installed: "
           "no TensorBoard logs are written. `pip install tensorboard`, or leave distill.tensorboard unset to log only "
           "when it is installed")  # fmt: skip


def summary_writer(folder: Path, asked: bool = False) -> Any | None:
    """A ``SummaryWriter`` logging into ``folder``, or None without tensorboard: with a warning (once per process)
    when the run ``asked`` for TensorBoard, silently otherwise."""
    global _said_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if asked and not _said_missing:
            _said_missing = True
            warnings.warn(MISSING, stacklevel=2)
        return None
    return SummaryWriter(str(folder))
