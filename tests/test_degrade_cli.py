"""``loqi degrade``: report figures checked against an independent computation, sequence feeding, the degraded
copy (layout, exact pixels, side files, read back), resuming a killed copy, formats and argument errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.data.folders import parse_utm
from loqi_core.data.sets import ImageList
from loqi_core.data.sets import TestSet as VprTestSet
from loqi_core.degrade.base import Degradation, Degraded
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.hooks.specs import DatasetSpec, DegradationSpec, NoParams, Params
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

CALLS: list[list[str]] = []


class Recorder(Degradation):
    """A temporal test codec: inverts the images, reports 100 bytes each, and records the file order it was fed."""

    temporal = True

    def __call__(self, images, *, seed: int = 0) -> Degraded:
        CALLS.append([int(img[0, 0, 0]) for img in images])
        return Degraded([255 - img for img in images], [100] * len(images))


class Upscale(Degradation):
    def __call__(self, images, *, seed: int = 0) -> Degraded:
        return Degraded([img.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2) for img in images])


class SeqParams(Params):
    root: Path | None = None


def _sequenced_test(params: SeqParams) -> VprTestSet:
    """The folder layout with capture order: database places 0-3 and 5-7 are two runs, the rest unordered."""
    from loqi_core.data.folders import list_images

    base = params.root / "images" / "test"
    lists = []
    for split in ("database", "queries"):
        paths = list_images(base / split)
        lists.append(ImageList(paths, np.array([parse_utm(p) for p in paths])))
    lists[0].sequences = [[0, 1, 2, 3], [5, 6, 7]]
    return VprTestSet("seq", *lists)


@hookimpl
def loqi_register_degradations(register):
    register(DegradationSpec("rec", r"rec", lambda p: Recorder(), NoParams, "test codec", ("rec",)))
    register(DegradationSpec("up2", r"up2", lambda p: Upscale(), NoParams, "test enlarger", ("up2",)))


@hookimpl
def loqi_register_datasets(register):
    register(DatasetSpec("seq", params=SeqParams, test=_sequenced_test))


local_plugin = SimpleNamespace(loqi_register_degradations=loqi_register_degradations, loqi_register_datasets=loqi_register_datasets)


@pytest.fixture
def plugins():
    with isolated_plugins(("tiny", tiny_plugin), ("degrade-test", local_plugin), entry_points=False) as p:
        yield p


@pytest.fixture
def dataset(tmp_path) -> Path:
    """8 places: the first pixel of each image encodes its place, so the recorder can tell the feeding order."""
    root = write_vpr_folder(tmp_path / "data", places=8, size=(16, 24))
    for path in sorted((root / "images" / "test").rglob("*.png")):
        arr = np.asarray(Image.open(path)).copy()
        arr[0, 0, 0] = int(path.name.split("@")[9].split("_")[0])
        Image.fromarray(arr).save(path)
    (root / "images" / "test" / "gt-notes.csv").write_text("query,positive\n")
    return root


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["degrade", *args], catch_exceptions=False)
    return result.exit_code, result.output


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def test_report_figures_match_an_independent_computation(plugins, dataset, tmp_path):
    code, out = _run("--report", "blur3", "rec", "--dataset", f"folder:{dataset}", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    rows = {r["spec"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    blur = parse_degradation("blur3")
    files = sorted((dataset / "images" / "test" / "database").glob("*.png")) + sorted((dataset / "images" / "test" / "queries").glob("*.png"))
    import torch

    squared, count = 0.0, 0
    for f in files:
        clean = _load(f)
        degraded = blur([torch.from_numpy(clean.astype(np.uint8)).permute(2, 0, 1)]).images[0].permute(1, 2, 0).numpy()
        squared += ((clean - degraded) ** 2).sum()
        count += clean.size
    assert rows["blur3"]["psnr_db"] == pytest.approx(10 * math.log10(255**2 / (squared / count)), abs=1e-3)
    assert rows["blur3"]["images"] == len(files) == 16
    assert rows["blur3"]["bytes_per_image"] is None and rows["rec"]["bytes_per_image"] == 100
    assert rows["rec"]["bits_per_pixel"] == pytest.approx(800 / (16 * 24))
    for spec in ("blur3", "rec"):
        assert spec in out
    assert "bits/pixel" in out and "each image encoded as its own one-frame stream" in out


def test_temporal_codec_gets_each_sequence_in_order_and_other_images_alone(plugins, dataset):
    CALLS.clear()
    code, out = _run("--report", "rec", "--dataset", f"seq:{dataset}", "--images", "database")
    assert code == 0, out
    assert CALLS == [[0, 1, 2, 3], [5, 6, 7], [4]]
    assert "each of 2 capture-order sequences encoded as one stream" in out
    CALLS.clear()
    _run("--report", "rec", "--dataset", f"seq:{dataset}", "--images", "database", "--limit", "6")
    assert CALLS == [[0, 1, 2, 3], [5], [4]]


def test_copy_keeps_layout_pixels_and_side_files_and_reads_back(plugins, dataset, tmp_path, monkeypatch):
    import torch

    import loqi_core.degrade.engine as degrade
    from loqi_core.data.datasets import load_dataset

    (dataset / "download.zip").write_bytes(b"z" * 100)
    monkeypatch.setattr(degrade, "SIDE_FILE_LIMIT", 50)
    out_dir = tmp_path / "copy"
    code, out = _run("blur3", "--dataset", f"folder:{dataset}", "--out", str(out_dir))
    assert code == 0, out
    assert not (out_dir / "download.zip").exists() and "not copied" in out and "download.zip" in out
    clean_files = sorted(p.relative_to(dataset) for p in dataset.rglob("*.png"))
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*.png")) == clean_files
    blur = parse_degradation("blur3")
    for rel in clean_files:
        clean = torch.from_numpy(_load(dataset / rel).astype(np.uint8)).permute(2, 0, 1)
        expected = blur([clean]).images[0].permute(1, 2, 0).numpy()
        assert np.array_equal(_load(out_dir / rel), expected), rel
    assert (out_dir / "images" / "test" / "gt-notes.csv").read_text() == "query,positive\n"
    copy = load_dataset(f"folder:{out_dir}", "test")
    assert len(copy.database) == 8 and len(copy.queries) == 8
    manifest = json.loads((out_dir / "loqi-degrade.json").read_text())
    assert manifest["settings"]["spec"] == "blur3" and len(manifest["nbytes"]) == 16
    assert "wrote 16 images" in out


def test_killed_copy_resumes_and_other_settings_are_refused(plugins, dataset, tmp_path):
    out_dir = tmp_path / "copy"
    assert _run("rec", "--dataset", f"seq:{dataset}", "--out", str(out_dir))[0] == 0
    progress = out_dir / "loqi-degrade.progress.jsonl"
    lines = progress.read_text().splitlines()
    last = json.loads(lines[-1])
    progress.write_text("\n".join(lines[:-1]) + '\n{"files": ["cut sh')  # a kill mid-line
    for f in last["files"]:
        (out_dir / f).unlink()
    CALLS.clear()
    code, out = _run("rec", "--dataset", f"seq:{dataset}", "--out", str(out_dir))
    assert code == 0, out
    assert len(CALLS) == 1 and all((out_dir / f).exists() for f in last["files"])
    assert f"{16 - len(last['files'])} already there" in out
    manifest = json.loads((out_dir / "loqi-degrade.json").read_text())
    assert len(manifest["nbytes"]) == 16 and set(manifest["nbytes"].values()) == {100}
    code, out = _run("blur3", "--dataset", f"seq:{dataset}", "--out", str(out_dir))
    assert code != 0 and "other settings" in out


def test_copy_refuses_a_folder_that_is_not_its_own(plugins, dataset, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    code, out = _run("blur3", "--dataset", f"folder:{dataset}", "--out", str(tmp_path / "busy"))
    assert code != 0 and "not empty" in out


def test_jpeg_sources_keep_their_format_or_become_exact_png(plugins, dataset, tmp_path):
    for path in list(dataset.rglob("*.png")):
        Image.open(path).save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    code, out = _run("blur3", "--dataset", f"folder:{dataset}", "--out", str(tmp_path / "keep"))
    assert code == 0 and "re-encoded at quality 100" in out
    assert len(list((tmp_path / "keep").rglob("*.jpg"))) == 16
    code, out = _run("blur3", "--dataset", f"folder:{dataset}", "--out", str(tmp_path / "png"), "--format", "png")
    assert code == 0 and len(list((tmp_path / "png").rglob("*.png"))) == 16 and "re-encoded" not in out


def test_enlarging_degradation_is_flagged(plugins, dataset):
    code, out = _run("--report", "up2", "--dataset", f"folder:{dataset}")
    assert code == 0 and "ENLARGES the images (24×16 → 48×32)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["blur3", "rec"], "give one SPEC"),
        (["blur3"], "give --out DIR"),
        (["--report", "blur3", "--out", "x"], "--report writes nothing"),
        (["--report", "blurry"], 'Unknown degradation "blurry"'),
        (["--report", "blur99"], 'bad degradation "blur99"'),
        (["--report", "blur3", "--images", "train"], "database and queries"),
    ],
)
def test_argument_errors(plugins, dataset, args, message):
    code, out = _run(*args, "--dataset", f"folder:{dataset}")
    assert code != 0 and message in out


def test_cuda_device_without_a_gpu_is_a_clear_error(plugins, dataset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, out = _run("--report", "blur3", "--dataset", f"folder:{dataset}", "--device", "cuda")
    assert code != 0 and "no CUDA device is visible" in out
