"""``loqi_core.degrade.engine`` called from Python: the copy it writes (exact pixels, layout, resume) and the figures it
measures, without the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from loqi_core.degrade.engine import CopyResult, DegradeReport, degrade_dataset, measure_degradations
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.errors import ConfigError
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder


@pytest.fixture
def plugins():
    with isolated_plugins(("tiny", tiny_plugin), entry_points=False) as p:
        yield p


def test_degrade_dataset_writes_exact_pixels_and_resumes(plugins, tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=4, size=(16, 24))
    out = tmp_path / "copy"
    result = degrade_dataset("blur3", f"folder:{root}", out, fmt="png", plugins=plugins)
    assert isinstance(result, CopyResult)
    assert (result.images, result.resumed, result.stats.images, result.root) == (8, 0, 8, root)
    assert not result.reencoded_jpeg and result.manifest == out / "loqi-degrade.json"
    blur = parse_degradation("blur3")
    clean_files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.png")) == clean_files
    for rel in clean_files:
        clean = torch.from_numpy(np.asarray(Image.open(root / rel).convert("RGB")).copy()).permute(2, 0, 1)
        assert np.array_equal(np.asarray(Image.open(out / rel)), blur([clean]).images[0].permute(1, 2, 0).numpy()), rel
    manifest = json.loads(result.manifest.read_text())
    assert manifest["settings"]["spec"] == "blur3" and manifest["figures"]["images"] == 8

    again = degrade_dataset("blur3", f"folder:{root}", out, fmt="png", plugins=plugins)
    assert (again.images, again.resumed, again.stats.images) == (8, 8, 0)
    with pytest.raises(ConfigError, match="other settings"):
        degrade_dataset("blur5", f"folder:{root}", out, fmt="png", plugins=plugins)


def test_measure_degradations_returns_one_row_per_spec(plugins, tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=4, size=(16, 24))
    report = measure_degradations(["blur3", "blur1"], f"folder:{root}", images="queries", limit=3, plugins=plugins)
    assert isinstance(report, DegradeReport)
    assert report.counts == {"queries": 3} and [r.spec for r in report.rows] == ["blur3", "blur1"]
    blur3, identity = report.rows
    assert blur3.images == 3 and 0 < blur3.psnr < 100 and identity.psnr == float("inf")
    assert report.header().startswith(f"folder:{root} (test: queries 3), seed 0") and "blur3" in report.table()
    assert [d["spec"] for d in report.as_dicts()] == ["blur3", "blur1"]


def test_a_device_this_machine_lacks_is_refused_before_any_image_is_read(plugins, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match='device: "cuda" asked for, but CUDA is not available'):
        measure_degradations(["blur3"], f"folder:{tmp_path / 'missing'}", device="cuda", plugins=plugins)
