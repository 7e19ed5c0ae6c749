"""Training views: the view rule, the test-time scale, augmentation shared by both views, any folder, the
pre-flight check before evaluation, and the loader-worker / torch-thread defaults."""

from __future__ import annotations

import importlib.util
import json
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.config import RunConfig
from loqi_core.degrade.base import Degradation, Degraded
from loqi_core.errors import DataError, LoqiError
from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.hooks.specs import AggregatorSpec, DegradationSpec, EncoderSpec, NoParams, Preprocess
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import Blur, GeMParams, TinyEncoderParams, _encoder, _gem, tiny_plugin, write_vpr_folder
from loqi_core.training.data import ViewConfig, clean_view, crop_window, typical_size
from loqi_core.training.engine import distill
from loqi_core.util import cpus

_spec = importlib.util.spec_from_file_location("distill_helpers", Path(__file__).with_name("distill_helpers.py"))
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # type: ignore[union-attr]


class Fails(Degradation):
    """A degradation that cannot handle its input (as a codec refusing an odd size would)."""

    spec = "fails"

    def __call__(self, images, *, seed: int = 0) -> Degraded:
        raise RuntimeError("this codec needs even sizes")


@hookimpl
def loqi_register_encoders(register):  # tiny's network, but keeping the image's own size (like lite0, NetVLAD)
    register(EncoderSpec("tiny-any", _encoder, TinyEncoderParams, "tiny, any size", preprocess=Preprocess(), default_loss="mse"))


@hookimpl
def loqi_register_aggregators(register):
    register(AggregatorSpec("tiny-any", _gem, GeMParams, "GeM + L2"))


@hookimpl
def loqi_register_degradations(register):
    register(DegradationSpec("fails", r"fails", lambda p: Fails(), NoParams, "always raises", ("fails",)))


extra = SimpleNamespace(
    loqi_register_encoders=loqi_register_encoders,
    loqi_register_aggregators=loqi_register_aggregators,
    loqi_register_degradations=loqi_register_degradations,
)


@pytest.fixture()
def plugins():
    with isolated_plugins(("tiny", tiny_plugin), ("tiny-any", extra)) as p:
        yield p


def mixed_folder(folder):
    """A user's folder: sizes, orientations, modes (grey, RGBA, palette) and formats (PNG, JPEG, WebP) all mixed."""
    from loqi_core.testing.helpers import random_images

    folder.mkdir(parents=True, exist_ok=True)
    shapes = [(40, 48), (64, 32), (30, 90), (72, 56), (33, 47), (50, 50)]
    for i, (h, w) in enumerate(shapes * 2):
        img = Image.fromarray(random_images(1, h, w, seed=i)[0].permute(1, 2, 0).numpy())
        mode, ext = [("RGB", "png"), ("L", "jpg"), ("RGBA", "png"), ("P", "png"), ("RGB", "webp"), ("L", "png")][i % 6]
        img.convert(mode).save(folder / f"photo{i:02d}.{ext}")
    return folder


# ---- the view rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 48), (64, 32), (30, 90), (7, 5), (200, 120)])
def test_every_image_becomes_a_view_of_the_view_size(shape):
    img = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    for augment in (False, True):
        view = clean_view(img, ViewConfig((24, 40), augment), np.random.default_rng(0))
        assert view.shape == (3, 24, 40) and view.dtype == torch.uint8


def test_crop_window_keeps_the_view_aspect_centred_and_augment_stays_inside():
    assert crop_window(100, 400, ViewConfig((50, 100), augment=False), np.random.default_rng(0)) == (0, 100, 100, 200)
    assert crop_window(300, 100, ViewConfig((50, 100), augment=False), np.random.default_rng(0)) == (125, 0, 50, 100)
    views = ViewConfig((50, 100), augment=True, min_crop=0.6)
    rng = np.random.default_rng(1)
    sides = []
    for _ in range(200):
        top, left, h, w = crop_window(100, 400, views, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 400
        assert abs(w / h - 2) < 0.05
        sides.append(h / 100)
    assert min(sides) >= 0.6 - 0.01 and max(sides) > 0.95 and min(sides) < 0.7


def test_no_augment_is_the_centred_unflipped_resized_crop():
    img = torch.arange(3 * 20 * 40, dtype=torch.float32).reshape(3, 20, 40).remainder(251).to(torch.uint8)
    view = clean_view(img, ViewConfig((20, 20), augment=False), np.random.default_rng(0))
    assert torch.equal(view, img[:, :, 10:30])


def test_augmentation_is_identical_for_both_views_and_varies_over_epochs(plugins, tmp_path):
    from loqi_core.data.datasets import load_dataset
    from loqi_core.training.data import BatchPlan, PlanConfig, StepDataset

    train = load_dataset(f"folder:{mixed_folder(tmp_path / 'i')}", "train")
    plan = BatchPlan(train, PlanConfig(False, 1, 1, 12, seed=0))
    ds = StepDataset(train, plan, Blur(3), ViewConfig((16, 24), augment=True), seed=0)
    first, again, next_epoch = ds[0], ds[0], ds[1]
    assert first["clean"].shape == first["degraded"].shape == (12, 3, 16, 24)
    assert torch.equal(first["degraded"], torch.stack(Blur(3)(list(first["clean"])).images))  # same crop and flip
    assert torch.equal(again["clean"], first["clean"])  # seeded: a resume reads the same views
    plain = StepDataset(train, plan, Blur(3), ViewConfig((16, 24), augment=False), seed=0)
    assert not torch.equal(plain[0]["clean"], first["clean"])
    assert not torch.equal(next_epoch["clean"], first["clean"])


# ---- the scale: loqi run takes it from the test sets, loqi distill from the method --------------------------


def test_typical_size_is_the_median_of_the_image_headers(tmp_path):
    sizes = [(30, 60), (32, 64), (32, 64), (100, 50), (32, 64)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    assert typical_size(paths) == (32, 64)
    with pytest.raises(DataError, match="missing.png"):
        typical_size([tmp_path / "missing.png"])


def test_loqi_run_trains_on_views_at_the_test_images_scale(plugins, tmp_path):
    root = write_vpr_folder(tmp_path / "test", places=6, size=(36, 60))
    args = ["run", "--method", "tiny-any", "--weights", "random", "--degrade", "blur3", "--train",
            f"folder:{mixed_folder(tmp_path / 'train')}", "--test", f"folder:{root}", "--max-steps", "2",
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "-s", "distill.batch_size=4",
            "-s", "eval.num_workers=0", "-s", "eval.batch_size=4", "-s", "eval.grid_queries=0"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "training views 36x60 (the test sets' typical image size), augment on" in result.output
    saved = RunConfig.model_validate_json((tmp_path / "run" / "distill" / "config.json").read_text())
    assert saved.distill.view_size == (36, 60) and saved.distill.augment
    summary = json.loads((tmp_path / "run" / "distill" / "summary.json").read_text())
    assert summary["view_size"] == [36, 60]
    explicit = CliRunner().invoke(cli, [*args[:-10], "--out", str(tmp_path / "run2"), *args[-8:], "--view-size", "20", "30", "--no-augment"])
    assert explicit.exit_code == 0, explicit.output
    saved = RunConfig.model_validate_json((tmp_path / "run2" / "config.json").read_text())
    assert saved.distill.view_size == (20, 30) and not saved.distill.augment  # recorded in the run's config


def test_loqi_distill_default_view_is_the_method_input_size_else_the_training_images(plugins, tmp_path):
    train = mixed_folder(tmp_path / "train")
    for method, expected in (("tiny", (32, 32)), ("tiny-any", (45, 49))):  # medians of the heights and widths
        config = RunConfig.model_validate(helpers.tiny_config(train, max_steps=2, batch_size=6) | {"model": {"method": method, "weights": "random"}})
        distill(config, tmp_path / method)
        saved = RunConfig.model_validate_json((tmp_path / method / "config.json").read_text())
        assert saved.distill.view_size == expected, method


# ---- any folder trains, for methods that keep the size and those with a fixed one ---------------------------


@pytest.mark.parametrize("method", ["tiny", "tiny-any"])
def test_any_folder_trains_with_no_flag(plugins, tmp_path, method):
    train = mixed_folder(tmp_path / "train")
    args = ["distill", "--method", method, "--weights", "random", "--degrade", "blur3", "--train", f"folder:{train}",
            "--max-steps", "3", "--batch-size", "6", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "final" / "model.safetensors").exists()


# ---- pre-flight: a broken input fails in seconds, before any evaluation -------------------------------------


def test_broken_training_input_fails_before_any_evaluation(plugins, tmp_path):
    root = write_vpr_folder(tmp_path / "test", places=6)
    args = ["run", "--method", "tiny", "--weights", "random", "--degrade", "fails", "--train",
            f"folder:{mixed_folder(tmp_path / 'train')}", "--test", f"folder:{root}", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    start = time.perf_counter()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and time.perf_counter() - start < 30
    assert "this codec needs even sizes" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "metrics.json").exists() and not _evaluated(tmp_path / "cache")


def test_unreadable_training_image_fails_naming_it_before_evaluation(plugins, tmp_path):
    train = mixed_folder(tmp_path / "train")
    (train / "photo00.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4 + b"IEND\xaeB`\x82")
    root = write_vpr_folder(tmp_path / "test", places=6)
    args = ["run", "--method", "tiny", "--weights", "random", "--degrade", "blur3",
            "--train", f"folder:{train}?check=none", "--test", f"folder:{root}", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), "-s", "distill.batch_size=12"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "photo00.png" in result.output and "Traceback" not in result.output
    assert not _evaluated(tmp_path / "cache")  # nothing was evaluated


def test_preflight_checks_a_batch_through_the_method_preprocessing(plugins, tmp_path):
    from loqi_core.training.recipe import preflight

    config = RunConfig.model_validate(helpers.tiny_config(mixed_folder(tmp_path / "t"), batch_size=12, view_size=(20, 28)))
    views = preflight(config)
    assert views.size == (20, 28) and views.augment
    with pytest.raises(LoqiError, match="this codec needs even sizes"):
        preflight(config.model_copy(update={"degrade": "fails"}))


def _evaluated(cache: Path) -> bool:
    """Whether an evaluation left anything in the cache (its root is made up front to check it is writable)."""
    return any(p.is_file() for p in (cache / "eval").rglob("*")) if cache.exists() else False


# ---- loader workers and torch threads ----------------------------------------------------------------------


def test_workers_and_threads_fit_the_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for n in (1, 2, 3, 4, 8, 16, 64):
        w = cpus.loader_workers(None, "cpu", cpus=n)
        t = cpus.torch_threads(None, w, "cpu", cpus=n)
        assert t >= 1 and (w + t == n - 1 or n == 1)  # one CPU left to the rest of the machine
    assert cpus.loader_workers(None, "cpu", cpus=2) == 0 and cpus.torch_threads(None, 0, "cpu", cpus=2) == 1
    assert cpus.loader_workers(None, "cpu", cpus=16) == 4 and cpus.torch_threads(None, 4, "cpu", cpus=16) == 11
    assert cpus.loader_workers(None, "cuda", cpus=16) == 15 and cpus.torch_threads(None, 15, "cuda", cpus=16) == 1
    assert cpus.loader_workers(3, "cpu", cpus=2) == 3 and cpus.torch_threads(5, 0, "cpu", cpus=2) == 5  # asked for
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpus.torch_threads(None, 0, "cpu", cpus=8) == 1


def test_available_cpus_follow_the_affinity_and_the_ranks_of_a_node(monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpus.available_cpus() == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert cpus.available_cpus() == 1


def test_a_run_uses_the_fitted_defaults_without_a_torch_warning(plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = RunConfig.model_validate(helpers.tiny_config(mixed_folder(tmp_path / "t"), max_steps=2, batch_size=6) | {})
    data = config.model_dump()
    data["distill"]["num_workers"] = None
    before = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. DataLoader's "will create 4 worker processes ... suggested max is 2"
        distill(RunConfig.model_validate(data), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["loader_workers"] == 1 and summary["torch_threads"] == 2
    assert torch.get_num_threads() == before  # restored after the run

