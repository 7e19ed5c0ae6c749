"""A run's recalls as TensorBoard scalars, each at the training step of the weights it measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from loqi_core.util.tensorboard import summary_writer


def trained_steps(weights: str | None) -> int:
    """The training step a row's weights were saved at (a run's training folder or a checkpoint), 0 for others: the
    training state's step, else the ``train_step`` a student's ``model.json`` records (a moving average, a best)."""
    from loqi_core.training.state import STATE_FILE  # torch: imported only when a run has recalls to log

    if not weights:
        return 0
    for folder in (Path(weights) / "checkpoints" / "final", Path(weights)):
        for name, key in ((STATE_FILE, "step"), ("model.json", "train_step")):
            record = folder / name
            if record.is_file():
                try:
                    return int(json.loads(record.read_text())[key])
                except (ValueError, KeyError, TypeError, OSError):
                    continue
    return 0


def log_recalls(folder: Path, metrics: Mapping[str, Any], asked: bool = False) -> bool:
    """Every recall of a run's ``metrics.json`` as scalars ``recall/<dataset>/<row>/R@N``, at step 0 for the
    pretrained model and at its training step for a trained one. Returns whether anything was written; ``asked``:
    as for ``summary_writer``."""
    writer = summary_writer(folder, asked)
    if writer is None:
        return False
    try:
        for dataset, ds in metrics["datasets"].items():
            for row, recalls in ds["rows"].items():
                weights = metrics.get("rows", {}).get(row, {}).get("weights")
                step = 0 if row.startswith("pretrained") else trained_steps(weights)
                for name, value in recalls.items():
                    writer.add_scalar(f"recall/{dataset}/{row}/{name}", value, step)
    finally:
        writer.close()
    return True
