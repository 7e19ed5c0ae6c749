"""An optional TensorBoard ``SummaryWriter``: the package is not a dependency, so a run asked to log there without
it says so once instead of skipping in silence."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

_said_missing = False

MISSING = ("TensorBoard logging is on (distill.tensorboard) but the tensorboard package is not installed: no "
           "TensorBoard logs are written. `pip install tensorboard`, or set distill.tensorboard=false to silence this")  # fmt: skip


def summary_writer(folder: Path) -> Any | None:
    """A ``SummaryWriter`` logging into ``folder``, or None (with a warning, once per process) without tensorboard."""
    global _said_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _said_missing:
            _said_missing = True
            warnings.warn(MISSING, stacklevel=2)
        return None
    return SummaryWriter(str(folder))
