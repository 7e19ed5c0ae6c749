"""``torchrun --nproc-per-node 2`` (gloo, CPU): two ranks train in step, rank 0 writes one checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _load(name: str):
    """A helper script of tests/ as a module (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


helpers, paper = _load("distill_helpers"), _load("paper_data")


def _train(config: dict, tmp_path: Path, name: str, *flags: str, ranks: int = 2) -> subprocess.CompletedProcess:
    """``config`` trained by tests/distill_helpers.py into ``tmp_path/name``: under torchrun with ``ranks`` > 1."""
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    cmd = [sys.executable, *launch, str(HERE / "distill_helpers.py"), str(cfg_file), str(tmp_path / name), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    train = helpers.write_images(tmp_path / "train", 32)
    config = helpers.tiny_config(train, batch_size=4, max_steps=4, checkpoint_every=2, log_every=1)
    proc = _train(config, tmp_path, "run", "--print-hash")

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


@pytest.mark.slow
def test_torchrun_validates_on_a_test_set_and_keeps_the_best(tmp_path):
    """Two ranks share each validation's extraction through the run directory's scratch cache; both take rank 0's
    R@1, so they write the same checkpoints and agree on the best student. Rank 1 reads the merged descriptors late
    (as on a busy machine): rank 0 must not empty the scratch folder before it has."""
    from loqi_core.testing.tiny import write_vpr_folder

    train = helpers.write_images(tmp_path / "train", 32)
    val = write_vpr_folder(tmp_path / "val", places=8)
    config = {**helpers.tiny_config(train, batch_size=4, max_steps=4, val=f"folder:{val}", val_every=2, ema=0.5,
                                    val_database="teacher"),
              "eval": {"cache_dir": str(tmp_path / "cache"), "num_workers": 0, "batch_size": 4}}  # fmt: skip
    _train(config, tmp_path, "run", "--slow-reader")
    run = tmp_path / "run"
    curve = json.loads((run / "summary.json").read_text())["validation"]
    assert [s for s, _ in curve["points"]] == [2, 4] and curve["metric"] == "R@1 (val, teacher database)"
    assert (run / "checkpoints" / "best").is_dir() and not (run / ".validation-scratch").exists()
    assert {p.name for p in (run / "checkpoints" / "step-00000002").iterdir()} >= {"rng-rank0.safetensors", "rng-rank1.safetensors", "ema.safetensors"}
    from loqi_core.data.datasets import load_dataset
    from loqi_core.evaluation.engine import evaluate
    from loqi_core.models.model import build_model
    from loqi_core.testing.helpers import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin

    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        teacher = build_model("tiny", weights="random", seed=config["seed"], plugins=plugins)
        student = build_model("tiny", weights=str(run), plugins=plugins)
        test = load_dataset(f"folder:{val}", "test", plugins=plugins)
        result = evaluate(student, test, "blur5", database_model=teacher, clean_database=True, seed=config["seed"],
                          device="cpu", cache=None, plugins=plugins)  # fmt: skip
    assert result.recalls["R@1"] == pytest.approx(curve["best"])


@pytest.mark.slow
def test_torchrun_mines_the_same_tuples_as_one_process(tmp_path):
    """The authors' mined step under torchrun: both ranks encode their share of each city's teacher descriptors,
    rank 0 mines and writes, both read; the tuples equal those of the same run in one process."""
    # the 12 paper cities, 3 places of 22 images each: a city's 66 images are two extraction blocks (64 + 2), one per rank
    root = paper.write_gsv_cities(tmp_path / "gsv", places=3, images=22)
    mined = {}
    for ranks in (2, 1):
        config = helpers.tiny_config(tmp_path, max_steps=2, mine=True, places_per_batch=2, images_per_place=2)
        config["distill"]["train"] = f"gsv-cities:{root}"
        config["eval"] = {"cache_dir": str(tmp_path / f"cache{ranks}"), "num_workers": 0}
        _train(config, tmp_path, f"run{ranks}", ranks=ranks)
        [npz] = (tmp_path / f"cache{ranks}").rglob("mined.npz")
        with np.load(npz) as f:
            mined[ranks] = (f["positives"], f["negatives"])
        assert json.loads((tmp_path / f"run{ranks}" / "summary.json").read_text())["steps"] == 2
    assert len(mined[2][0]) == 792 and (mined[2][0] >= 0).all()  # every image an anchor: 44 images beyond 30 m
    assert np.array_equal(mined[2][0], mined[1][0]) and np.array_equal(mined[2][1], mined[1][1])
