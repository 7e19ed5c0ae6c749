"""``torchrun --nproc-per-node 2`` (gloo, CPU): two ranks train in step, rank 0 writes one checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    spec = importlib.util.spec_from_file_location("distill_helpers", HERE / "distill_helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    train = helpers.write_images(tmp_path / "train", 32)
    config = helpers.tiny_config(train, batch_size=4, max_steps=4, checkpoint_every=2, log_every=1)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "distill_helpers.py"), str(cfg_file), str(tmp_path / "run"), "--print-hash"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    digests = dict(re.findall(r"RANK(\d) (-?\d+\.\d{12})", proc.stdout))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # DDP kept the replicas identical
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-00000002"
    assert {p.name for p in step.iterdir()} == {
        "model.safetensors", "model.json", "optimizer.safetensors", "train_state.json",
        "rng-rank0.safetensors", "rng-rank1.safetensors", "digests.json",
    }  # fmt: skip
    assert not (run / ".loqi.lock").exists()  # rank 0 held the run directory's lock and released it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    rows = (run / "train_log.csv").read_text().splitlines()
    assert len(rows) == 5  # header + one row per step, written once (by rank 0)
    from loqi_core.models.checkpoint import load_checkpoint
    from loqi_core.models.model import build_model
    from loqi_core.testing.helpers import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin

    with isolated_plugins(("tiny", tiny_plugin)):
        model = build_model("tiny", weights="random")
        load_checkpoint(model, run)
    total = sum(float(v.double().sum()) for v in model.state_dict().values())
    assert f"{total:.12f}" == digests["0"]
