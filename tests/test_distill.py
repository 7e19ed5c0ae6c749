"""The distillation engine on CPU with the tiny method: it learns, keeps the teacher and frozen layers intact,
writes a complete run directory, batches places correctly and fails clearly."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from loqi_core.config import RunConfig
from loqi_core.errors import ConfigError
from loqi_core.evaluation.cache import model_fingerprint
from loqi_core.models.checkpoint import checkpoint_lineage, load_checkpoint
from loqi_core.models.model import build_model
from loqi_core.testing.helpers import isolated_plugins, random_images
from loqi_core.testing.tiny import Blur, tiny_plugin
from loqi_core.training.engine import TrainingError, distill
from loqi_core.training.recipe import set_train_modes

_spec = importlib.util.spec_from_file_location("distill_helpers", Path(__file__).with_name("distill_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # type: ignore[union-attr]


pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_for(config: RunConfig):
    """The engine's teacher: the same seeded random init (the engine builds with the config's seed)."""
    return build_model("tiny", weights="random", seed=config.seed).eval()


def descriptor_gap(student, teacher, images, blur) -> float:
    with torch.no_grad():
        t = teacher(teacher.prepare(images))[1]
        s = student(student.prepare(blur(images).images))[1]
    return float(((s - t) ** 2).sum(1).mean())


def test_distillation_lowers_student_teacher_gap_on_held_out_images(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 48, seed=1)
    config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=30, checkpoint_every=12))
    final = distill(config, tmp_path / "run")

    teacher = teacher_for(config)
    student = build_model("tiny", weights="random").eval()
    load_checkpoint(student, tmp_path / "run")  # what eval loads: the run directory
    held_out = random_images(16, 40, 48, seed=99)
    blur = Blur(5)
    before = descriptor_gap(teacher, teacher, held_out, blur)  # the student starts as the teacher
    after = descriptor_gap(student, teacher, held_out, blur)
    assert after < 0.6 * before, (before, after)

    # frozen layers (tiny trains encoder.3, encoder.6, aggregator) and all BN statistics are untouched
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key in t_state:
        frozen = key.startswith("encoder.0") or key.startswith("encoder.1.") or key.startswith("encoder.4.running")
        if frozen:
            assert torch.equal(t_state[key], s_state[key]), key
    assert not torch.equal(t_state["encoder.6.weight"], s_state["encoder.6.weight"])
    assert final == tmp_path / "run" / "checkpoints" / "final"


def test_run_directory_contents(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 24)
    config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=7, checkpoint_every=3, keep_checkpoints=1))
    distill(config, tmp_path / "run", plugins=tiny)
    run = tmp_path / "run"
    saved = RunConfig.model_validate_json((run / "config.json").read_text())
    assert saved.distill.max_steps == 7 and saved.out == run
    assert json.loads((run / "plugins.json").read_text())["test-tiny"] == "0"
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 8))
    assert set(rows[0]) == {"step", "epoch", "lr", "loss", "mse"}
    assert float(rows[0]["lr"]) == pytest.approx(3e-4) and float(rows[1]["lr"]) == pytest.approx(3e-4 * 0.99999)  # as trained
    assert [r.name for r in sorted((run / "checkpoints").iterdir())] == ["final", "step-00000006"]  # keep 1
    state = json.loads((run / "checkpoints" / "final" / "train_state.json").read_text())
    assert state["step"] == 7 and state["mode"] == "distill" and state["loss"] == "mse"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 7 and summary["precision"] == "fp32" and summary["trainable_parameters"] > 0
    # the student's lineage: the teacher's model fingerprint, as loqi eval and loqi index build compute it
    teacher = model_fingerprint(teacher_for(config))
    for ckpt in ("final", "step-00000006"):
        assert checkpoint_lineage(run / "checkpoints" / ckpt) == {"fingerprint": teacher, "method": "tiny", "weights": "random"}
    assert checkpoint_lineage(run) == checkpoint_lineage(run / "checkpoints" / "final")
    assert model_fingerprint(build_model("tiny", weights=str(run))) != teacher


def test_same_seed_same_weights_and_workers_do_not_matter(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 24)
    common = dict(max_steps=5, augment=True, view_size=(30, 36))
    distill(RunConfig.model_validate(helpers.tiny_config(train, num_workers=0, **common)), tmp_path / "a")
    distill(RunConfig.model_validate(helpers.tiny_config(train, num_workers=2, **common)), tmp_path / "b")
    a = build_model("tiny", weights=str(tmp_path / "a"))
    b = build_model("tiny", weights=str(tmp_path / "b"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_non_finite_loss_names_step_terms_and_last_checkpoint(tmp_path):
    from types import SimpleNamespace

    from loqi_core.hooks.hookspecs import hookimpl
    from loqi_core.hooks.specs import LossSpec

    class Explodes:
        calls = 0

        def __call__(self, batch):
            Explodes.calls += 1
            value = ((batch.student_desc - batch.teacher_desc) ** 2).mean()
            return value * float("nan") if Explodes.calls == 7 else value

    @hookimpl
    def loqi_register_losses(register):
        register(LossSpec("explodes", lambda p: Explodes()))

    plugin = SimpleNamespace(loqi_register_losses=loqi_register_losses)
    train = helpers.write_images(tmp_path / "train", 24)
    config = RunConfig.model_validate(helpers.tiny_config(train, loss="explodes", max_steps=20, checkpoint_every=5, log_every=3))
    with isolated_plugins(("tiny", tiny_plugin), ("explodes", plugin)):
        with pytest.raises(TrainingError) as info:
            distill(config, tmp_path / "run")
    message = str(info.value)
    assert "not finite at step 7" in message and "explodes=nan" in message
    assert str(tmp_path / "run" / "checkpoints" / "step-00000005") in message
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-00000005"]


def test_triplet_on_label_free_set_is_a_clear_error(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 8)
    config = RunConfig.model_validate(helpers.tiny_config(train, loss="mse+triplet", max_steps=2))
    with pytest.raises(ConfigError, match="triplet needs places .* label-free"):
        distill(config, tmp_path / "run")


def test_finetune_trains_without_teacher_on_places(tiny, tmp_path):
    train = helpers.write_places(tmp_path / "train", places=6, per_place=3)
    config = RunConfig.model_validate(
        helpers.tiny_config(train, max_steps=4, places_per_batch=3, images_per_place=2, loss="ickd")
    )
    final = distill(config, tmp_path / "run", mode="finetune")
    assert checkpoint_lineage(final) is None  # no teacher: no lineage
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "multisimilarity"] and len(rows) == 4
    assert all(float(r["multisimilarity"]) > 0 for r in rows)
    assert (final / "model.safetensors").exists()

    bad = RunConfig.model_validate(helpers.tiny_config(train, max_steps=2, finetune_loss="mse"))
    with pytest.raises(ConfigError, match="needs the teacher"):
        distill(bad, tmp_path / "run2", mode="finetune")


def test_triplet_distillation_on_places(tiny, tmp_path):
    train = helpers.write_places(tmp_path / "train", places=6, per_place=3)
    config = RunConfig.model_validate(
        helpers.tiny_config(train, max_steps=3, places_per_batch=3, images_per_place=2, loss="mse+0.5*triplet")
    )
    distill(config, tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["mse"]) + 0.5 * float(r["triplet"]), rel=1e-5)


def test_place_batches_and_rank_striding(tmp_path):
    from loqi_core.data.datasets import load_dataset
    from loqi_core.training.data import BatchPlan, PlanConfig

    train = load_dataset(f"folder:{helpers.write_places(tmp_path / 'p', places=8, per_place=3)}", "train")
    cfg = dict(by_places=True, places_per_batch=2, images_per_place=2, batch_size=0, seed=1)
    plan = BatchPlan(train, PlanConfig(**cfg))
    assert plan.steps_per_epoch == 4
    for _, batch in map(plan.batch, range(8)):
        pids = [pid for _, pid in batch]
        assert len(batch) == 4 and len(set(pids)) == 2 and all(pids.count(p) == 2 for p in pids)
        assert all(train.place_ids[i] == pid for i, pid in batch)
    assert plan.batch(0) != plan.batch(4)  # a new epoch, a new order
    assert BatchPlan(train, PlanConfig(**cfg)).batch(5) == plan.batch(5)  # reproducible
    ranks = [BatchPlan(train, PlanConfig(**cfg, world_size=2, rank=r)) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == 2
    assert ranks[0].batch(1)[1] == plan.epoch(0)[2] and ranks[1].batch(1)[1] == plan.epoch(0)[3]


def test_views_are_aligned_and_reproducible(tiny, tmp_path):
    from loqi_core.data.datasets import load_dataset
    from loqi_core.training.data import BatchPlan, PlanConfig, StepDataset, ViewConfig

    train = load_dataset(f"folder:{helpers.write_images(tmp_path / 'i', 6)}", "train")
    plan = BatchPlan(train, PlanConfig(False, 1, 1, 3, seed=0))
    ds = StepDataset(train, plan, Blur(3), ViewConfig((20, 24), augment=True), seed=0)
    item = ds[1]
    assert item["clean"].shape == (3, 3, 20, 24) and item["clean"].dtype == torch.uint8
    assert torch.equal(item["degraded"], torch.stack(Blur(3)(list(item["clean"])).images))  # same crop and flip
    assert torch.equal(ds[1]["clean"], item["clean"])
    assert not torch.equal(ds[3]["clean"], ds[1]["clean"])


def test_train_modes_freeze_bn_and_dropout():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    set_train_modes(model, ["3", "4"], freeze_bn=False, dropout=False)
    assert [m.training for m in model] == [False, False, False, False, True]
    set_train_modes(model, ["3", "4"], freeze_bn=True, dropout=True)
    assert [m.training for m in model] == [True, False, True, True, False]


def test_bad_trainable_prefix_and_existing_run_dir(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 8)
    config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=1, trainable=["encoder.9"]))
    with pytest.raises(ConfigError, match='"encoder.9" matches no parameter of "tiny"'):
        distill(config, tmp_path / "bad")
    ok = RunConfig.model_validate(helpers.tiny_config(train, max_steps=1))
    distill(ok, tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a training run"):
        distill(ok, tmp_path / "run")
    changed = RunConfig.model_validate(helpers.tiny_config(train, max_steps=1, lr=5e-4))
    with pytest.raises(TrainingError, match=r"distill.lr: 0.0003 → 0.0005"):
        distill(changed, tmp_path / "run", resume=True)


def test_cli_distill_and_resume(tiny, tmp_path):
    from click.testing import CliRunner

    from loqi_core.cli import cli

    train = helpers.write_images(tmp_path / "train", 16)
    (tmp_path / "c.toml").write_text("[distill]\nview_size = [24, 24]\nlog_every = 2\n")
    args = ["distill", "--method", "tiny", "--weights", "random", "--degrade", "blur3", "--train", f"folder:{train}",
            "--max-steps", "3", "--lr", "1e-3", "--device", "cpu", "--out", str(tmp_path / "run"),
            "-c", str(tmp_path / "c.toml"), "-s", "distill.view_size=null",
            "-s", "distill.num_workers=0", "-s", "distill.batch_size=4"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = RunConfig.model_validate_json((tmp_path / "run" / "config.json").read_text())
    assert saved.distill.view_size == (32, 32) and saved.distill.log_every == 2  # null clears the file's value; auto = tiny's input size
    assert "student checkpoint:" in result.output and (tmp_path / "run/checkpoints/final/model.safetensors").exists()
    more = CliRunner().invoke(cli, ["distill", "--resume", str(tmp_path / "run"), "--max-steps", "5"])
    assert more.exit_code == 0, more.output
    assert json.loads((tmp_path / "run/summary.json").read_text())["resumed_from"] == 3
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    bad = CliRunner().invoke(cli, ["distill", "--method", "tiny", "--loss", "nope", "--train", f"folder:{train}"])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_bf16_autocast_and_channels_last_path_runs_on_cpu(tiny, tmp_path):
    """The CUDA settings (bf16 autocast, channels_last) through the same code path, forced on the CPU."""
    train = helpers.write_images(tmp_path / "train", 8)
    config = RunConfig.model_validate(
        helpers.tiny_config(train, max_steps=2, precision="bf16", channels_last="on", loss="ickd+mse")
    )
    distill(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["channels_last"] is True
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert all(math.isfinite(float(r["ickd"])) and math.isfinite(float(r["mse"])) for r in rows)
    weights = build_model("tiny", weights=str(tmp_path / "run")).state_dict()
    assert all(v.dtype != torch.bfloat16 for v in weights.values())  # master weights stay fp32


def test_resume_refuses_other_mode_or_process_count(tiny, tmp_path):
    train = helpers.write_places(tmp_path / "train", places=4, per_place=2)
    config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=2, checkpoint_every=1, keep_checkpoints=5))
    distill(config, tmp_path / "run")
    with pytest.raises(TrainingError, match="written by `loqi distill`, not `loqi finetune`"):
        distill(config, tmp_path / "run", mode="finetune", resume=True)
    state_file = tmp_path / "run" / "checkpoints" / "final" / "train_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    from loqi_core.models.checkpoint import write_digests

    write_digests(state_file.parent)  # as a 2-process run would have written it (else the digest flags the edit)
    with pytest.raises(TrainingError, match="written by 2 process"):
        distill(config, tmp_path / "run", resume=True)


def test_tensorboard_gets_every_term_when_installed(tiny, tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    scalars: list[tuple[str, float, int]] = []

    class Writer:
        def __init__(self, logdir: str) -> None:
            self.logdir = logdir

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def close(self) -> None:
            scalars.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=Writer))
    train = helpers.write_images(tmp_path / "train", 8)
    config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=3, tensorboard=True, loss="ickd+mse"))
    distill(config, tmp_path / "run")
    tags = {(t, s) for t, _, s in scalars}
    assert {("loss/loss", 3), ("loss/ickd", 3), ("loss/mse", 1), ("lr", 2)} <= tags and scalars[-1][0] == "closed"
