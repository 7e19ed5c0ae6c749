"""Resumable training state: weights + optimizer + scheduler + RNG + data position, written atomically.

A checkpoint is a directory ``checkpoints/step-00000500/`` (or ``final/``) holding

- ``model.safetensors`` + ``model.json``: the student, loadable by ``loqi_core.models.checkpoint.load_checkpoint``;
  a distilled student's ``model.json`` names its teacher (``distilled_from``: the teacher's model fingerprint);
- ``optimizer.safetensors``: every optimizer state tensor (``state.<param>.<name>``);
- ``train_state.json``: step, optimizer param groups, scheduler state, Python/NumPy RNG states, loss terms;
- ``rng-rank<R>.safetensors``: each rank's torch (and CUDA) RNG state;
- ``ema.safetensors``: the moving average of the student's weights (``distill.ema``), when the run keeps one.

- ``digests.json``: the sha256 and size of every other file, written last and checked on every load.

It is written under a temporary name and renamed into place, so a run killed at any moment leaves either
the previous checkpoint or the new one, never half of one; a file damaged later (a bit flip, a truncation) is
caught by its digest, and a resume falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from loqi_core.errors import LoqiError, WeightsError
from loqi_core.models.checkpoint import LINEAGE, load_checkpoint, save_checkpoint, verify, write_digests
from loqi_core.models.model import VPRModel

STATE_FILE = "train_state.json"
REQUIRED = ("model.safetensors", "model.json", "optimizer.safetensors", STATE_FILE)
STEP_PREFIX = "step-"
EMA_FILE = "ema.safetensors"


class CheckpointError(LoqiError):
    """No intact checkpoint to resume from, or a state that must not be saved (non-finite parameters)."""


def step_dir(root: Path, step: int) -> Path:
    return root / "checkpoints" / f"{STEP_PREFIX}{step:08d}"


def final_dir(root: Path) -> Path:
    return root / "checkpoints" / "final"


def best_dir(root: Path) -> Path:
    """The best validated student so far (``distill.val``): model files and digests, no training state."""
    return root / "checkpoints" / "best"


def tmp_dir(target: Path) -> Path:
    return target.with_name(f".tmp-{target.name}")


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished step checkpoints (renamed into place), oldest first."""
    base = root / "checkpoints"
    if not base.is_dir():
        return []
    found = [p for p in base.glob(f"{STEP_PREFIX}*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers that hold NaN or Inf (one host sync per tensor)."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _step_of(ckpt: Path) -> int:
    return int(json.loads((ckpt / STATE_FILE).read_text())["step"])


def latest_intact(root: Path) -> Path | None:
    """The newest checkpoint of a run whose every file matches its digest; each damaged newer one is skipped
    with a warning. None when the run has no checkpoint; a CheckpointError when it has only damaged ones."""
    found = complete_checkpoints(root)
    if (final_dir(root) / STATE_FILE).exists():
        found.append(final_dir(root))
    if not found:
        return None
    steps = {}
    for c in found:
        try:
            steps[c] = _step_of(c)
        except (OSError, ValueError, KeyError, TypeError):
            steps[c] = math.inf  # garbled train_state.json: checked first, so that verify() names it
    damaged = []
    for c in sorted(found, key=lambda c: (steps[c], c.name == "final"), reverse=True):
        reason = verify(c, REQUIRED)
        if reason is None:
            for bad in damaged:
                warnings.warn(f"checkpoint {bad} is damaged; resuming from the newest intact one, {c}", stacklevel=2)
            return c
        damaged.append(f"{c} ({reason})")
    raise CheckpointError(f"no intact checkpoint in {root}: " + "; ".join(damaged) + ". Start again with another --out")


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
    ema: dict[str, torch.Tensor] | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path:
    """Fill ``ckpt_tmp`` (rank RNG files already there) and rename it to ``target``; returns ``target``.
    ``lineage``: the teacher a distilled student records in ``model.json`` (``LINEAGE``)."""
    extra: dict[str, Any] = {"train_step": state["step"]}
    if lineage is not None:
        extra[LINEAGE] = lineage
    save_checkpoint(student, ckpt_tmp, extra=extra)
    if ema is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(ckpt_tmp / EMA_FILE))
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
    write_digests(ckpt_tmp)
    if target.exists():
        shutil.rmtree(target)
    ckpt_tmp.replace(target)
    return target


def read_checkpoint(
    ckpt: Path, rank: int, student: VPRModel, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore everything ``write_checkpoint`` stored; returns the JSON state (``step`` = data position)."""
    path = ckpt / STATE_FILE
    reason = verify(ckpt, REQUIRED)
    if reason is not None:
        raise CheckpointError(f"checkpoint {ckpt} is damaged: {reason}")
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read training state {path}: {exc}") from None
    load_checkpoint(student, ckpt, verified=True)  # verify() above hashed every file once
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


def read_ema(ckpt: Path) -> dict[str, torch.Tensor]:
    """The moving average a checkpoint holds (its digests were checked by ``read_checkpoint``)."""
    path = ckpt / EMA_FILE
    if not path.exists():
        raise WeightsError(f"{ckpt} holds no {EMA_FILE}: it was not written by a run with distill.ema")
    return load_file(str(path))


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``final`` is never pruned)."""
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
