"""A run SIGKILLed in the middle of a step, then resumed, ends bit-identical to an uninterrupted run (CPU)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distill_helpers", HERE / "distill_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(config: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(HERE / "distill_helpers.py"), str(config), str(out), *flags],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    helpers = _helpers()
    train = helpers.write_places(tmp_path / "train", places=8, per_place=3)
    # triplet draws random negatives from the global torch RNG, so this also checks that RNG state resumes
    config = helpers.tiny_config(
        train, loss="mse+triplet", places_per_batch=3, images_per_place=2, max_steps=14, checkpoint_every=4,
        log_every=3, num_workers=1, augment=True, loss_params={"triplet": {"negatives": 1}},
    )  # fmt: skip
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config))

    whole = _run(cfg_file, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = _run(cfg_file, tmp_path / "killed", "--kill-at-step", "10")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert "step-00000008" in ckpts and "final" not in ckpts
    logged = list(csv.DictReader((tmp_path / "killed" / "train_log.csv").open()))
    assert len(logged) == 9  # rows past the checkpoint exist and must be replaced on resume

    resumed = _run(cfg_file, tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from"] == 8

    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "whole" / "checkpoints" / "final" / name))
        b = load_file(str(tmp_path / "killed" / "checkpoints" / "final" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].equal(b[key]), f"{name}: {key} differs"
    assert (tmp_path / "whole" / "train_log.csv").read_text() == (tmp_path / "killed" / "train_log.csv").read_text()
