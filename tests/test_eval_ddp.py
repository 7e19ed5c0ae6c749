"""``torchrun --nproc-per-node 2 loqi eval`` (gloo, CPU): the ranks share the extraction, rank 0 searches and
reports, and every descriptor, prediction and recall is bit-identical to one process. CricaVPR's cross-image
attention makes a descriptor depend on its whole batch, so this also proves the batches are the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loqi_core.evaluation.engine import SHARD_SIZE, extraction_blocks
from loqi_core.testing.tiny import write_vpr_folder

LOQI = str(Path(sys.executable).parent / "loqi")


def test_blocks_hold_whole_batches_whatever_the_shards():
    shards = [[[i] for i in range(k * SHARD_SIZE, (k + 1) * SHARD_SIZE)] for k in range(7)] + [[[999]]]
    assert extraction_blocks(shards, 32) == [[0], [1], [2], [3], [4], [5], [6], [7]]
    assert extraction_blocks(shards, 100) == [[0, 1, 2, 3, 4, 5, 6, 7]]  # lcm(64, 100) = 1600 images per block
    assert extraction_blocks(shards, 48) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # 192 = 4 batches of 48
    for block in extraction_blocks(shards, 48)[:-1]:
        assert sum(len(u) for s in block for u in shards[s]) % 48 == 0


def _eval(cmd_prefix: list[str], out: Path, cache: Path, root: Path) -> subprocess.CompletedProcess:
    args = [*cmd_prefix, "eval", "--method", "cricavpr", "--weights", "random", "--dataset", f"folder:{root}",
            "--degrade", "jpeg20", "--out", str(out), "--cache-dir", str(cache), "--eval-batch-size", "8", "--save-descriptors", "--pairs", "3",
            "-s", "model.encoder_params={arch: vits14, depth: 1}", "-s", "model.aggregator_params={group_size: 0, heads: 4}",
            "-s", "model.image_size=[42, 42]", "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LOQI_OFFLINE": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _descriptors(cache: Path) -> dict[str, bytes]:
    files = sorted(cache.glob("eval/descriptors/*/descriptors.npy"))
    return {f.parent.name: f.read_bytes() for f in files}


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_bit_for_bit(tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=150, size=(24, 32))  # 150 + 150 images: 3 blocks each
    single = _eval([sys.executable, LOQI], tmp_path / "one", tmp_path / "cache1", root)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", LOQI]
    double = _eval(torchrun, tmp_path / "two", tmp_path / "cache2", root)
    assert double.returncode == 0, double.stdout[-2000:] + double.stderr[-3000:]

    one, two = _descriptors(tmp_path / "cache1"), _descriptors(tmp_path / "cache2")
    assert len(one) == 2 and one == two  # database and queries: same cache keys, same bytes
    assert not list((tmp_path / "cache2").glob("eval/descriptors/*/*rank*"))  # the rank parts were merged away
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["datasets"] == m2["datasets"]
    p1 = (tmp_path / "one" / "predictions" / "data__pretrained_degraded.csv").read_text()
    assert p1 == (tmp_path / "two" / "predictions" / "data__pretrained_degraded.csv").read_text()
    # every rank encoded a share (its progress bar names it), but only rank 0 printed the report
    assert "(rank 0/2)" in double.stderr and "(rank 1/2)" in double.stderr
    assert double.stdout.count("R@1") == single.stdout.count("R@1") > 0
    db = np.load(next((tmp_path / "cache2").glob("eval/descriptors/*/descriptors.npy")))
    assert np.isfinite(db).all() and db.shape[0] == 150
    # rank 0 alone writes the descriptors and pairs it searched with: the same bytes as one process's
    for name in ("descriptors/data__pretrained_degraded/database.npy", "descriptors/data__pretrained_degraded/queries.txt",
                 "pairs/data__pretrained_degraded.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert len((tmp_path / "two" / "pairs" / "data__pretrained_degraded.txt").read_text().splitlines()) == 150 * 3


CONFIG = """
[model]
image_size = [42, 42]
encoder_params = {arch = "vits14", depth = 1}
aggregator_params = {group_size = 0, heads = 4}
[eval]
num_workers = 0
grid_queries = 2
batch_size = 8
[distill]
num_workers = 0
places_per_batch = 2
images_per_place = 2
lr = 0.001
"""


@pytest.mark.slow
def test_torchrun_loqi_run_trains_with_ddp_and_reports_once(tmp_path):
    """`loqi run` under torchrun: DDP training, shared extraction, one report; the teacher's rows equal one process's."""
    root = write_vpr_folder(tmp_path / "data", places=40, size=(24, 32))
    (tmp_path / "c.toml").write_text(CONFIG)
    args = ["run", "--method", "cricavpr", "--weights", "random", "--train", f"folder:{root}/images/test", "--test",
            f"folder:{root}", "--degrade", "jpeg20", "--max-steps", "2", "--config", str(tmp_path / "c.toml")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LOQI_OFFLINE": "1"}
    runs = {}
    for name, prefix in (("one", [sys.executable, LOQI]),
                         ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", LOQI])):
        proc = subprocess.run([*prefix, *args, "--out", str(tmp_path / name), "--cache-dir", str(tmp_path / f"cache-{name}")],
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.stdout.count("run directory:") == 1
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["datasets"]["data"]["rows"]
    summary = json.loads((tmp_path / "two" / "distill" / "summary.json").read_text())
    assert summary["world_size"] == 2
    for row in ("pretrained_clean", "pretrained_degraded"):
        assert runs["one"][row] == runs["two"][row]
    assert set(runs["two"]) == {"pretrained_clean", "pretrained_degraded", "distilled", "distilled_queries"}
    assert (tmp_path / "two" / "activations" / "data.png").exists()
