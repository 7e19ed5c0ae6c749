"""Resumable training state: weights + optimizer + scheduler + RNG + data position, written atomically.

A checkpoint is a directory ``checkpoints/step-00000500/`` (or ``final/``) holding

- ``model.safetensors`` + ``model.json``: the student, loadable by ``loqi_core.model.load_checkpoint``;
- ``optimizer.safetensors``: every optimizer state tensor (``state.<param>.<name>``);
- ``train_state.json``: step, optimizer param groups, scheduler state, Python/NumPy RNG states, loss terms;
- ``rng-rank<R>.safetensors``: each rank's torch (and CUDA) RNG state.

It is written under a temporary name and renamed into place, so a run killed at any moment leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from loqi_core.errors import WeightsError
from loqi_core.model import VPRModel, load_checkpoint, save_checkpoint

STATE_FILE = "train_state.json"
STEP_PREFIX = "step-"


def step_dir(root: Path, step: int) -> Path:
    return root / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def final_dir(root: Path) -> Path:
    return root / "checkpoints" / "final"


def tmp_dir(target: Path) -> Path:
    return target.with_name(f".tmp-{target.name}")


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished step checkpoints (renamed into place), oldest first."""
    base = root / "checkpoints"
    if not base.is_dir():
        return []
    found = [p for p in base.glob(f"{STEP_PREFIX}*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _host_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def _set_host_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def write_rank_rng(ckpt_tmp: Path, rank: int) -> None:
    """Each rank stores its own torch/CUDA RNG state into the (not yet renamed) checkpoint directory."""
    save_file(_rng_tensors(), str(ckpt_tmp / f"rng-rank{rank}.safetensors"))


def write_checkpoint(
    ckpt_tmp: Path,
    target: Path,
    student: VPRModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Fill ``ckpt_tmp`` (rank RNG files already there) and rename it to ``target``; returns ``target``."""
    save_checkpoint(student, ckpt_tmp, extra={"train_step": state["step"]})
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    save_file(tensors, str(ckpt_tmp / "optimizer.safetensors"))
    full = {
        **state,
        "optimizer_param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict(),
        "host_rng": _host_rng(),
    }
    (ckpt_tmp / STATE_FILE).write_text(json.dumps(full, indent=1))
    if target.exists():
        shutil.rmtree(target)
    ckpt_tmp.replace(target)
    return target


def read_checkpoint(
    ckpt: Path, rank: int, student: VPRModel, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything ``write_checkpoint`` stored; returns the JSON state (``step`` = data position)."""
    path = ckpt / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read training state {path}: {exc}") from None
    load_checkpoint(student, ckpt)
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        opt_state.setdefault(int(pid), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        pid, name = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    _set_host_rng(state["host_rng"])
    rng_file = ckpt / f"rng-rank{rank}.safetensors"
    if not rng_file.exists():
        raise WeightsError(f"{ckpt} has no RNG state for rank {rank}: resume with the same number of processes")
    rng = load_file(str(rng_file))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``final`` is never pruned)."""
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
