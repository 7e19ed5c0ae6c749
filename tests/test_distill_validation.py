"""Validation-chosen checkpoints, the moving average of the weights and the learning-rate schedules, on CPU with the
tiny method: when validation runs, what it measures, which student the run keeps, and that a resume keeps the best."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from loqi_core.config import DistillConfig, RunConfig
from loqi_core.data.sets import ImageList, TrainSet
from loqi_core.errors import ConfigError
from loqi_core.evaluation.engine import evaluate
from loqi_core.models.model import build_model
from loqi_core.testing.tiny import write_vpr_folder
from loqi_core.training.engine import distill
from loqi_core.training.recipe import lr_factor
from loqi_core.training.validation import Curve, split_heldout, validation_steps

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("distill_helpers", HERE / "distill_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # type: ignore[union-attr]


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(train: Path, **distill_fields) -> RunConfig:
    return RunConfig.model_validate(helpers.tiny_config(train, **distill_fields))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ---- the rhythm, the held-out slice, the curve, the schedule ------------------------------------------------------


def test_validation_steps():
    every = DistillConfig(val="heldout", val_every=4)
    assert validation_steps(every, steps_per_epoch=5, total_steps=10) == [4, 8, 10]
    parts = DistillConfig(val="heldout", val_parts=2)
    assert validation_steps(parts, steps_per_epoch=5, total_steps=12) == [2, 5, 7, 10, 12]  # round(2.5) = 2
    assert validation_steps(DistillConfig(val="heldout"), steps_per_epoch=12, total_steps=12) == [2, 4, 6, 8, 10, 12]
    assert validation_steps(DistillConfig(), steps_per_epoch=5, total_steps=10) == []


def test_config_rules():
    assert DistillConfig(val="heldout").select == "best"  # validation chooses unless told otherwise
    assert DistillConfig(val="heldout", select="last").select == "last"
    for bad, says in (({"select": "best"}, "needs a validation"), ({"val": "heldout", "val_every": 2, "val_parts": 3}, "not both")):
        with pytest.raises(ValueError, match=says):
            DistillConfig(**bad)


def test_split_heldout_keeps_the_slice_out():
    paths = [Path(f"img{i:02d}.png") for i in range(20)]
    rest, held = split_heldout(TrainSet("t", ImageList(paths)), 4)
    assert held == [Path("img00.png"), Path("img06.png"), Path("img13.png"), Path("img19.png")]
    assert len(rest.images) == 16 and not set(held) & set(rest.images.paths)
    # with places, whole places leave: no place is on both sides
    ids = np.repeat(np.arange(10), 2)
    positions = np.stack([ids * 100.0, np.zeros(20)], 1)
    rest, held = split_heldout(TrainSet("p", ImageList(paths, positions), ids), 4)
    held_places = {int(ids[paths.index(p)]) for p in held}
    assert len(held) == 4 and len(held_places) == 2
    assert not held_places & set(rest.place_ids.tolist()) and len(rest.images) == 16
    with pytest.raises(ConfigError, match="leave none to train on"):
        split_heldout(TrainSet("t", ImageList(paths)), 20)


def test_curve_keeps_the_best_and_ties_go_to_the_later_step():
    loss = Curve("heldout loss", higher_is_better=False)
    assert loss.add(3, 0.5) and not loss.add(6, 0.7) and loss.add(9, 0.5)
    assert (loss.best_step, loss.best) == (9, 0.5)
    recall = Curve.from_json(json.loads(json.dumps(Curve("R@1", True, [(2, 10.0)], 2, 10.0).to_json())))
    assert not recall.add(4, 9.0) and recall.add(6, 12.5) and recall.best_step == 6


def test_lr_factor():
    cosine = DistillConfig(schedule="cosine", warmup_steps=3)
    factors = [lr_factor(s, cosine, 13) for s in range(13)]
    assert factors[:3] == pytest.approx([0.25, 0.5, 0.75])  # linear warm-up
    assert factors[3] == pytest.approx(1.0) and factors[8] == pytest.approx(0.5)  # half way down
    assert factors[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9))) and factors[12] > 0
    assert lr_factor(7, DistillConfig(gamma=0.9), 13) == pytest.approx(0.9**7)


def test_the_log_shows_the_rate_each_step_trained_with(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 16)
    distill(_config(train, max_steps=6, schedule="cosine", warmup_steps=2), tmp_path / "run", plugins=tiny)
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    expected = [3e-4 * lr_factor(s, DistillConfig(schedule="cosine", warmup_steps=2), 6) for s in range(6)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-6)


# ---- the moving average -------------------------------------------------------------------------------------------


def test_ema_is_the_runs_student(tiny, tmp_path):
    """final/ holds the average of the raw weights of every step (decay d, starting from the initial weights); the
    last step's full state, with the raw weights, stays in a step checkpoint for a resume."""
    train = helpers.write_images(tmp_path / "train", 16)
    config = _config(train, max_steps=5, checkpoint_every=1, keep_checkpoints=10, ema=0.6)
    final = distill(config, tmp_path / "run", plugins=tiny)
    average = {k: v.clone() for k, v in build_model("tiny", weights="random", seed=config.seed, plugins=tiny).state_dict().items()}
    for step in range(1, 6):
        raw = _weights(tmp_path / "run" / "checkpoints" / f"step-{step:08d}")
        for k, v in raw.items():
            if v.is_floating_point():
                average[k] = 0.6 * average[k] + 0.4 * v
    saved = _weights(final)
    assert not _same(saved, _weights(tmp_path / "run" / "checkpoints" / "step-00000005"))
    for k, v in saved.items():
        torch.testing.assert_close(v, average[k], rtol=1e-5, atol=1e-6)
    assert not (final / "train_state.json").exists() and json.loads((final / "model.json").read_text())["ema"] == 0.6


# ---- label-free validation and the best checkpoint ----------------------------------------------------------------


def test_heldout_validation_chooses_the_student(tiny, tmp_path):
    from loqi_core.losses.expression import build_loss
    from loqi_core.testing.tiny import Blur
    from loqi_core.training.data import ViewConfig
    from loqi_core.training.dist import setup
    from loqi_core.training.engine import _Trainer
    from loqi_core.training.recipe import encoder_spec, training_loss
    from loqi_core.training.validation import HeldoutValidation

    train = helpers.write_images(tmp_path / "train", 24)
    config = _config(train, max_steps=8, val="heldout", val_every=3, heldout=6, checkpoint_every=100, keep_checkpoints=10,
                     lr=3e-3)  # fmt: skip
    run = tmp_path / "run"
    final = distill(config, run, plugins=tiny)
    summary = json.loads((run / "summary.json").read_text())
    curve = summary["validation"]
    assert [s for s, _ in curve["points"]] == [3, 6, 8] and summary["select"] == "best"
    assert curve["best"] == min(v for _, v in curve["points"])
    csv_rows = list(csv.DictReader((run / "validation.csv").open()))
    assert [int(r["step"]) for r in csv_rows] == [3, 6, 8] and sum(int(r["best"]) for r in csv_rows) == 1
    # final/ is the student of the best step: its held-out loss is the curve's best value
    held = [p for p in sorted(train.iterdir()) if p.name in {"img000.png", "img005.png", "img009.png", "img014.png",
                                                             "img018.png", "img023.png"}]  # evenly spaced, 6 of 24
    view = json.loads((run / "config.json").read_text())["distill"]["view_size"]
    check = HeldoutValidation(held, ViewConfig(tuple(view)), Blur(5), config.seed, 8)
    student = build_model("tiny", weights=str(run), plugins=tiny).eval()
    teacher = build_model("tiny", weights="random", seed=config.seed, plugins=tiny).eval()
    loss = build_loss("mse", {}, tiny)
    value = check(student, teacher, loss, lambda m, x: m(m.prepare(x)))
    assert value == pytest.approx(curve["best"], rel=1e-5)
    assert _same(_weights(final), _weights(run / "checkpoints" / "best"))
    if curve["best_step"] != 8:  # the last step's weights are not the run's student then
        assert not _same(_weights(final), _weights(run / "checkpoints" / "step-00000008"))
    assert "best validation heldout loss" in (run / "run.log").read_text()
    # the held-out images are out of the batch plan: never trained on
    trainer = _Trainer(config, tmp_path / "plan", "distill", False, tiny, *setup("cpu"))
    trainer.spec = encoder_spec(config, tiny)
    trainer._build_data(training_loss(config, "distill", trainer.spec, tiny))
    trained = {Path(p) for p in trainer.dataset.paths}
    assert len(trained) == 18 and not trained & set(held)


def test_validation_refuses_what_it_cannot_measure(tiny, tmp_path):
    train = helpers.write_images(tmp_path / "train", 12)
    places = helpers.write_places(tmp_path / "places", places=4, per_place=2)
    cases = [
        (_config(train, max_steps=2, val="heldout", heldout=12), "distill", "leave none to train on"),
        (_config(train, max_steps=2, val="heldout", heldout=2), "finetune", "needs the teacher"),
        (_config(places, max_steps=2, val="heldout", heldout=2, loss="mse+triplet", places_per_batch=2, images_per_place=2),
         "distill", "needs places"),
    ]  # fmt: skip
    for i, (config, mode, says) in enumerate(cases):
        with pytest.raises(ConfigError, match=says):
            distill(config, tmp_path / f"run{i}", mode=mode, plugins=tiny)
        assert not (tmp_path / f"run{i}").exists()  # refused before the run directory is made


# ---- labelled validation --------------------------------------------------------------------------------------------


def test_a_finetune_asked_for_the_teachers_database_validates_against_its_own(tiny, tmp_path):
    """--protocol paper asks for the teacher's database; a finetune has no teacher, so it encodes the database itself
    (what `loqi finetune --protocol paper` meets) instead of refusing a setting the user never gave."""
    places = helpers.write_places(tmp_path / "places", places=4, per_place=2)
    val = write_vpr_folder(tmp_path / "val", places=6)
    config = RunConfig.model_validate({**helpers.tiny_config(places, max_steps=2, val=f"folder:{val}", val_every=2,
                                                             val_database="teacher", finetune_loss="multisimilarity",
                                                             places_per_batch=2, images_per_place=2),
                                       "eval": {"cache_dir": str(tmp_path / "cache"), "num_workers": 0}})  # fmt: skip
    distill(config, tmp_path / "run", mode="finetune", plugins=tiny)
    curve = json.loads((tmp_path / "run" / "summary.json").read_text())["validation"]
    assert curve["metric"] == "R@1 (val, student database)" and [s for s, _ in curve["points"]] == [2]


@pytest.mark.parametrize("database", ["teacher", "student"])
def test_test_set_validation_is_recall_of_the_students_queries(tiny, tmp_path, database):
    """The curve's R@1 at the best step is R@1 of that student (degraded queries) against the clean database the
    teacher encodes, or the degraded one the student encodes; the student's descriptors leave no cache entry."""
    from loqi_core.data.datasets import load_dataset

    train = helpers.write_images(tmp_path / "train", 16)
    val = write_vpr_folder(tmp_path / "val", places=10)
    for q in sorted((val / "images" / "test" / "queries").iterdir())[::2]:  # half the queries: positions 100 m off
        east = float(q.name.split("@")[1])
        q.rename(q.with_name(q.name.replace(f"@{east:.2f}@", f"@{east + 100:.2f}@", 1)))
    cache = tmp_path / "cache"
    config = RunConfig.model_validate({**helpers.tiny_config(train, max_steps=6, val=f"folder:{val}", val_every=2,
                                                             val_database=database, lr=3e-3),
                                       "eval": {"cache_dir": str(cache), "num_workers": 0, "batch_size": 4}})  # fmt: skip
    run = tmp_path / "run"
    distill(config, run, plugins=tiny)
    curve = json.loads((run / "summary.json").read_text())["validation"]
    assert [s for s, _ in curve["points"]] == [2, 4, 6] and curve["metric"].startswith("R@1")
    student = build_model("tiny", weights=str(run), plugins=tiny)
    teacher = build_model("tiny", weights="random", seed=config.seed, plugins=tiny)
    test = load_dataset(f"folder:{val}", "test", plugins=tiny)
    kw = {"database_model": teacher, "clean_database": True} if database == "teacher" else {}
    result = evaluate(student, test, "blur5", seed=config.seed, device="cpu", cache=None, plugins=tiny, **kw)
    assert result.recalls["R@1"] == pytest.approx(curve["best"]) and 0 < curve["best"] < 100, curve
    entries = (cache / "eval" / "descriptors").glob("*/key.json")
    models = [json.loads(e.read_text())["model"] for e in entries]
    assert len(models) == (1 if database == "teacher" else 0)  # the teacher's database only; no student's
    assert not (run / ".validation-scratch").exists()


# ---- resume ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_validated_run_resumes_with_its_best(tmp_path):
    """SIGKILL after a validation that set a new best and before the next checkpoint; the resumed run keeps the
    curve and the best so far, and ends with the same student, curve and average as an uninterrupted run."""
    import os
    import subprocess
    import sys

    train = helpers.write_images(tmp_path / "train", 24)
    config = helpers.tiny_config(train, max_steps=10, val="heldout", val_every=3, heldout=6, checkpoint_every=100,
                                 ema=0.7, lr=3e-3)  # fmt: skip
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(out: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(HERE / "distill_helpers.py"), str(cfg_file), str(tmp_path / out), *flags],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip

    whole = run("whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run("killed", "--kill-at-step", "7")  # step 8 is being trained: validations at 3 and 6 are done
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "final" not in {p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()}
    resumed = run("killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("whole", "killed"))
    assert b["resumed_from"] == 6 and a["validation"] == b["validation"]
    for name in ("final", "best"):
        assert _same(_weights(tmp_path / "whole" / "checkpoints" / name), _weights(tmp_path / "killed" / "checkpoints" / name))
    assert (tmp_path / "whole" / "validation.csv").read_text() == (tmp_path / "killed" / "validation.csv").read_text()


def test_the_default_student_is_the_moving_average_but_not_under_the_paper_protocol():
    """loqi's recipe keeps a moving average of the weights (decay 0.95: the seed study in docs/distillation.md); the
    authors kept the last step's weights, so --protocol paper does too."""
    from loqi_core.config import resolve_run_config

    assert resolve_run_config(None, {"model.method": "lite0-gem"}).distill.ema == 0.95
    assert resolve_run_config(None, {"model.method": "netvlad", "protocol": "paper"}).distill.ema is None
    assert resolve_run_config(None, {"model.method": "lite0-gem", "distill.ema": None}).distill.ema is None
