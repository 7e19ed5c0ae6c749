"""The public Python API (``from loqi_core import ...``): every exported name called for real, on the tiny method,
generated image folders and a module of the test's own; ``import loqi_core`` stays free of torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import loqi_core
from loqi_core.errors import ConfigError, DataError, WeightsError
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

EXPORTED = ("build_model", "wrap_model", "load_dataset", "parse_degradation", "encode", "evaluate", "distill")
FAST = {"batch_size": 4, "num_workers": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path / "cache"))
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        yield plugins


def manual_descriptors(model, paths, degradation=None) -> np.ndarray:
    """Read, (degrade), preprocess and encode each image alone: what the API must reproduce."""
    from loqi_core.data.images import read_image

    rows = []
    with torch.no_grad():
        for path in paths:
            img = read_image(path)
            if degradation is not None:
                img = degradation([img]).images[0]
            rows.append(F.normalize(model.eval()(model.prepare([img]))[1], dim=1)[0].numpy())
    return np.stack(rows)


def test_import_loqi_core_imports_no_torch_and_lists_the_api():
    code = "import sys, loqi_core; print(sorted(m for m in ('torch', 'torchvision', 'timm', 'faiss', 'av') if m in sys.modules)); print(dir(loqi_core))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert set(EXPORTED) | {"__version__"} == set(eval(out[1])), "plugin authors import hookimpl from loqi_core.plugin"


def test_every_exported_name_is_the_function_it_names():
    from loqi_core import api
    from loqi_core.data import datasets
    from loqi_core.degrade import grammar as degradation
    from loqi_core.models import model

    homes = {"build_model": model, "wrap_model": model, "load_dataset": datasets, "parse_degradation": degradation,
             "encode": api, "evaluate": api, "distill": api}  # fmt: skip
    assert set(homes) == set(EXPORTED) and set(EXPORTED) <= set(loqi_core.__all__)
    for name, module in homes.items():
        assert getattr(loqi_core, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no attribute 'evaluat'"):
        loqi_core.evaluat  # noqa: B018


def test_load_dataset_and_parse_degradation(tiny, tmp_path):
    from loqi_core import load_dataset, parse_degradation

    root = write_vpr_folder(tmp_path / "data", places=5)
    test = load_dataset(f"folder:{root}")  # a test set unless asked for "train"
    assert (len(test.database), len(test.queries)) == (5, 5)
    blur = parse_degradation("blur3")
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    out = blur([img], seed=0).images[0]
    assert out.shape == img.shape and out.dtype == torch.uint8 and not torch.equal(out, img)
    train = load_dataset(f"folder:{root / 'images' / 'test' / 'database'}", "train")
    assert len(train.images) == 5 and train.place_ids is not None  # @east@north@ names: places


def test_encode_a_folder_or_a_list_matches_encoding_each_image_by_hand(tiny, tmp_path):
    from loqi_core import build_model, encode, parse_degradation

    model = build_model("tiny", weights="random")
    root = write_vpr_folder(tmp_path / "data", places=6, size=(30, 44))
    folder = root / "images" / "test" / "queries"
    paths, desc = encode(model, folder, device="cpu", **FAST)
    assert paths == sorted(folder.rglob("*.png"))  # the stated order: sorted by path
    assert desc.dtype == np.float32 and desc.shape == (6, 16) and isinstance(desc, np.ndarray)
    np.testing.assert_allclose(desc, manual_descriptors(model, paths), atol=1e-5)

    shuffled = [paths[i] for i in (3, 0, 5)]
    got = encode(model, shuffled, degrade="blur3", device="cpu", **FAST)
    assert got.paths == shuffled  # a list keeps its order
    np.testing.assert_allclose(got.descriptors, manual_descriptors(model, shuffled, parse_degradation("blur3")), atol=1e-5)
    with pytest.raises(WeightsError, match='"tiny" declares no pretrained weights'):
        encode("tiny", shuffled)  # a method name means its default weights; the tiny method has none


def test_encode_shares_the_evaluation_cache_and_names_bad_input(tiny, tmp_path):
    from loqi_core import build_model, encode, evaluate

    model = build_model("tiny", weights="random")
    root = write_vpr_folder(tmp_path / "data", places=4)
    evaluate(model, root, "blur3", device="cpu", **FAST)  # fills the cache with the queries' descriptors
    entries = set((tmp_path / "cache" / "eval" / "descriptors").iterdir())
    queries = sorted((root / "images" / "test" / "queries").glob("*.png"))
    encode(model, queries, degrade="blur3", device="cpu", **FAST)
    assert set((tmp_path / "cache" / "eval" / "descriptors").iterdir()) == entries  # same key: a hit, no new entry

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images .* in .*empty"):
        encode(model, tmp_path / "empty")
    with pytest.raises(ConfigError, match="eval.batch_size"):
        encode(model, queries, batch_size=0)
    with pytest.raises(ConfigError, match="not Linear"):
        encode(nn.Linear(2, 2), queries)


def test_evaluate_takes_a_name_a_folder_or_a_test_set_and_settings(tiny, tmp_path):
    from loqi_core import build_model, evaluate, load_dataset
    from loqi_core.config import EvalConfig
    from loqi_core.evaluation.engine import evaluate as engine

    model = build_model("tiny", weights="random")
    root = write_vpr_folder(tmp_path / "data", places=8)
    by_path = evaluate(model, root, "blur3", device="cpu", recall=[1, 3], **FAST)
    by_name = evaluate(model, f"folder:{root}", "blur3", device="cpu", recall=[1, 3], cache=False, **FAST)
    reference = engine(model, load_dataset(f"folder:{root}"), "blur3", config=EvalConfig(recall=[1, 3], **FAST), device="cpu")
    assert by_path.recalls == by_name.recalls == reference.recalls and list(by_path.recalls) == ["R@1", "R@3"]
    np.testing.assert_array_equal(by_path.predictions, reference.predictions)
    assert by_path.protocol["degradation"] == "blur3" and "R@1" in repr(by_path) and len(repr(by_path)) < 300
    with pytest.raises(ConfigError, match="eval.bogus"):
        evaluate(model, root, bogus=1)


def test_own_module_is_evaluated_through_wrap_model(tiny, tmp_path):
    """docs/python-api.md, "Evaluating your own network": a plain nn.Module, no plugin."""
    from loqi_core import encode, evaluate, wrap_model

    class MeanColour(nn.Module):  # a descriptor: mean colour of a 2×2 grid of cells
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * F.adaptive_avg_pool2d(x, 2).flatten(1)

    net = MeanColour()
    model = wrap_model(net, size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    root = write_vpr_folder(tmp_path / "data", places=8)
    paths = sorted((root / "images" / "test" / "database").glob("*.png"))
    got = encode(model, paths, device="cpu", **FAST).descriptors
    from loqi_core.data.images import read_image

    by_hand = []
    for path in paths:  # the interface, spelled out: uint8 → resize → (x/255 − mean)/std → module → L2
        x = F.interpolate(read_image(path)[None].float() / 255, size=(32, 32), mode="bilinear", antialias=True)
        by_hand.append(F.normalize(net((x - 0.5) / 0.5), dim=1)[0].detach().numpy())
    np.testing.assert_allclose(got, np.stack(by_hand), atol=1e-5)

    result = evaluate(model, root, "none", device="cpu", **FAST)
    assert result.recalls["R@1"] == 100.0  # noisy copies of each place: a colour layout finds them all
    assert not (tmp_path / "cache" / "eval" / "descriptors").exists()  # a wrapped module's code is not versioned

    class Pair(nn.Module):  # (latent map, descriptor), as loqi's own models return
        def forward(self, x):
            return x, x.mean((2, 3))

    pair = encode(wrap_model(Pair(), size=(16, 16)), paths[:2], device="cpu", **FAST).descriptors
    assert pair.shape == (2, 3)
    with pytest.raises(ConfigError, match="preprocess.size"):
        wrap_model(net, size=(32,))
    with pytest.raises(ConfigError, match="register it as a method"):
        loqi_core.distill(model)


def test_random_init_is_seeded_so_python_and_the_cli_give_the_same_numbers(tiny, tmp_path):
    """docs/python-api.md: a number from Python equals the CLI's for the same inputs, random weights included."""
    from click.testing import CliRunner

    from loqi_core import build_model, evaluate
    from loqi_core.cli import cli

    root = write_vpr_folder(tmp_path / "data", places=8)
    torch.manual_seed(12345)  # whatever a notebook did before: build_model seeds its own initialisation
    model = build_model("tiny", weights="random")
    before = torch.get_rng_state()
    assert torch.equal(build_model("tiny", weights="random").encoder[0].weight, model.encoder[0].weight)
    assert torch.equal(torch.get_rng_state(), before), "build_model must leave torch's global generator alone"
    other = build_model("tiny", weights="random", seed=1)
    assert not torch.equal(other.encoder[0].weight, model.encoder[0].weight)
    python = evaluate(model, f"folder:{root}", "blur3", device="cpu", cache=False, **FAST)
    result = CliRunner().invoke(cli, ["eval", "--method", "tiny", "--weights", "random", "--dataset", f"folder:{root}",
                                      "--degrade", "blur3", "--device", "cpu", "--no-cache", "-s", "eval.batch_size=4",
                                      "-s", "eval.num_workers=0", "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 0, result.output
    cli_rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["datasets"]
    (rows,) = [ds["rows"] for ds in cli_rows.values()]
    assert {k: round(v, 4) for k, v in python.recalls.items()} == rows["pretrained_degraded"]


def test_build_model_takes_every_kind_of_run_directory(tiny, tmp_path):
    from loqi_core import build_model
    from loqi_core.models.checkpoint import save_checkpoint

    trained = build_model("tiny", weights="random")
    with torch.no_grad():
        trained.encoder[0].weight.add_(1.0)
    layouts = {
        "checkpoint": tmp_path / "ckpt",  # model.safetensors + model.json
        "distill": tmp_path / "distill-run" / "checkpoints" / "final",  # loqi distill --out
        "run": tmp_path / "run" / "distill" / "checkpoints" / "final",  # loqi run --out
    }
    for folder in layouts.values():
        save_checkpoint(trained, folder)
    for weights in (tmp_path / "ckpt", tmp_path / "distill-run", str(tmp_path / "run"), tmp_path / "ckpt" / "model.safetensors"):
        loaded = build_model("tiny", weights=weights)
        assert torch.equal(loaded.encoder[0].weight, trained.encoder[0].weight), weights
    save_checkpoint(trained, tmp_path / "sweep" / "distill-mse" / "checkpoints" / "final")
    with pytest.raises(WeightsError, match="sweep with one student per loss.*distill-mse"):
        build_model("tiny", weights=tmp_path / "sweep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no loqi checkpoint at .*empty"):
        build_model("tiny", weights=tmp_path / "empty")


def test_distill_returns_the_student_and_resumes_its_run(tiny, tmp_path):
    import importlib.util

    from loqi_core import build_model, distill

    spec = importlib.util.spec_from_file_location("distill_helpers", Path(__file__).with_name("distill_helpers.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)  # type: ignore[union-attr]
    train = helpers.write_images(tmp_path / "train", 16, seed=1)
    settings = dict(max_steps=3, batch_size=8, lr=3e-4, num_workers=0, tensorboard=False)
    teacher = build_model("tiny", weights="random")
    student = distill(teacher, "blur5", train=f"folder:{train}", out=tmp_path / "run", device="cpu", seed=3, **settings)
    final = tmp_path / "run" / "checkpoints" / "final" / "model.safetensors"
    assert student.info["weights"] == str(final) and student.info["method"] == "tiny"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["degrade"] == "blur5" and saved["distill"]["max_steps"] == 3 and saved["model"]["weights"] == "random"
    assert saved["distill"]["loss"] is None  # the method's default loss (tiny: mse)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3
    from_disk = build_model("tiny", weights=tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), from_disk.state_dict().values()))

    # the same call again (a notebook cell run twice) continues the finished run: the same student, no training
    again = distill(teacher, "blur5", train=f"folder:{train}", out=tmp_path / "run", device="cpu", seed=3, **settings)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))
    with pytest.raises(ConfigError, match="distill.lrr"):
        distill("tiny", "blur5", train=f"folder:{train}", out=tmp_path / "other", lrr=1e-3)


@pytest.mark.parametrize("cpus", [2, 8])
def test_encode_and_evaluate_with_default_workers(tiny, tmp_path, monkeypatch, cpus):
    """No num_workers given: the loader gets what loqi_core.util.cpus allows (none on 2 CPUs, 2 on 8), same descriptors."""
    from loqi_core import build_model, encode, evaluate

    monkeypatch.setattr("loqi_core.util.cpus.available_cpus", lambda: cpus)
    root = write_vpr_folder(tmp_path / "data", places=4)
    model = build_model("tiny", weights="random")
    paths, got = encode(model, root / "images" / "test" / "queries", batch_size=4, cache=False)
    assert np.allclose(got, manual_descriptors(model, paths), atol=1e-5)
    result = evaluate(model, root, "blur3", batch_size=4, cache=False)
    assert set(result.recalls) == {"R@1", "R@2", "R@5", "R@10"}
