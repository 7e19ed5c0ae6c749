"""Grids, activation maps and TensorBoard through `loqi run` on the tiny method, and TensorBoard's absence said once."""

from __future__ import annotations

import json
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.report import tensorboard as tensorboard_log
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder
from loqi_core.util import tensorboard as summary


def test_missing_tensorboard_is_said_once_and_only_when_asked_for(monkeypatch, tmp_path):
    from loqi_core.config import RunConfig

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    monkeypatch.setattr(summary, "_said_missing", False)
    assert RunConfig().distill.tensorboard is None  # the default: log when installed, say nothing when not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert summary.summary_writer(tmp_path / "a") is None
        assert tensorboard_log.log_recalls(tmp_path / "b", {"datasets": {}}) is False
    assert not caught, "a run that did not ask for TensorBoard is not warned about it (issue #27)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert summary.summary_writer(tmp_path / "a", asked=True) is None
        assert tensorboard_log.log_recalls(tmp_path / "b", {"datasets": {}}, asked=True) is False
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "tensorboard package is not installed" in said[0] and "distill.tensorboard" in said[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trained_steps_come_from_the_final_checkpoint(tmp_path):
    final = tmp_path / "distill" / "checkpoints" / "final"
    final.mkdir(parents=True)
    (final / "train_state.json").write_text(json.dumps({"step": 120}))
    assert tensorboard_log.trained_steps(str(tmp_path / "distill")) == 120
    assert tensorboard_log.trained_steps(str(final)) == 120
    assert tensorboard_log.trained_steps("imagenet") == 0 and tensorboard_log.trained_steps(None) == 0


@pytest.fixture()
def writer(monkeypatch):
    """A stand-in ``SummaryWriter`` recording (logdir, tag, value, step)."""
    scalars: list[tuple[str, str, float, int]] = []

    class Writer:
        def __init__(self, logdir: str) -> None:
            self.logdir = logdir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((self.logdir, tag, value, step))

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=Writer))
    return scalars


def test_run_writes_paired_grids_shared_scale_maps_and_recalls_to_tensorboard(tmp_path, writer):
    root = write_vpr_folder(tmp_path / "data", places=8)
    out = tmp_path / "run"
    args = ["run", "--method", "tiny", "--degrade", "blur3", "--weights", "random", "--train", f"folder:{root}/images/test",
            "--test", f"folder:{root}", "--max-steps", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "-s", "distill.batch_size=4", "-s", "distill.num_workers=0", "-s", "eval.num_workers=0",
            "-s", "eval.batch_size=4", "-s", "distill.lr=0.001", "-s", "eval.grid_queries=3",
            "-s", "eval.grid_select=first", "-s", "eval.grid_k=2", "-s", "distill.tensorboard=true"]  # fmt: skip
    with isolated_plugins(("tiny", tiny_plugin)):
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    evals = {(tag, step): value for logdir, tag, value, step in writer if logdir == str(out / "tensorboard")}
    rows = metrics["datasets"]["data"]["rows"]
    assert evals == {(f"recall/data/{row}/{n}", 2 if row.startswith("distilled") else 0): v
                     for row, r in rows.items() for n, v in r.items()}  # fmt: skip
    assert any(logdir == str(out / "distill" / "tensorboard") and tag == "loss/loss" for logdir, tag, _, _ in writer)
    assert "recalls logged to TensorBoard" in res.output
    names = sorted(p.name for p in (out / "grids").iterdir())
    assert names == ["data__distilled.png", "data__distilled_queries.png", "data__pretrained_clean.png",
                     "data__pretrained_degraded.png", "data__pretrained_degraded_vs_distilled.png"]  # fmt: skip
    with Image.open(out / "grids" / "data__pretrained_degraded_vs_distilled.png") as both, \
            Image.open(out / "grids" / "data__distilled.png") as one:  # fmt: skip
        assert both.height > one.height and both.width == one.width  # two lines (pretrained, distilled) per query
    with Image.open(out / "activations" / "data.png") as maps:
        a = np.asarray(maps.convert("RGB")).astype(int)
    yellow = (a[..., 0] > 200) & (a[..., 1] > 200) & (a[..., 2] < 160)  # the colour bar's middle
    assert yellow.sum() >= 100 and maps.width > 5 * 128
