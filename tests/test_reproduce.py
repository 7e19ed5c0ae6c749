"""``loqi reproduce table2``: the plan (--dry-run) with the published numbers, subsets, and an end-to-end smoke run
on tiny generated data in the datasets' own on-disk formats (--weights random), skipped and resumed when run again."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.experiments.reproduce import paper_table
from loqi_core.testing.tiny import write_vpr_folder

QUICK = ["-s", "distill.num_workers=0", "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0",
         "-s", "distill.places_per_batch=3", "-s", "distill.images_per_place=2"]  # fmt: skip


def _scene(rng, h=48, w=64):
    small = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def write_paper_data(root: Path) -> Path:
    """Tiny msls/tokyo247 (gmberton layout), nordland (the downloader's frame-indexed names) and GSV-Cities
    (Dataframes/<City>.csv + Images/<city>/..., the paper's 12 cities with one place of 4 images each)."""
    from loqi_plugin_gsv_cities import CITIES_300x400
    from loqi_plugin_gsv_cities.reader import image_name

    rng = np.random.default_rng(0)
    write_vpr_folder(root / "msls", places=6, size=(48, 64), seed=1)
    write_vpr_folder(root / "tokyo247", places=6, size=(48, 64), seed=2)
    for split in ("database", "queries"):
        (root / "nordland/images/test" / split).mkdir(parents=True, exist_ok=True)
    for i in range(12):
        img = _scene(rng)
        name = f"@0@{i * 100:07.1f}@@@@@{i}@@@@@@@@.png"
        Image.fromarray(img).save(root / "nordland/images/test/database" / name)
        if i % 2 == 0:
            Image.fromarray(np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)).save(
                root / "nordland/images/test/queries" / name
            )
    gsv = root / "gsv-cities"
    (gsv / "Dataframes").mkdir(parents=True, exist_ok=True)
    for c, city in enumerate(CITIES_300x400):
        (gsv / "Images" / city).mkdir(parents=True, exist_ok=True)
        base = _scene(rng)
        with open(gsv / "Dataframes" / f"{city}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid"])
            for k in range(4):
                lat, lon = 40.0 + c + k * 1e-5, 10.0 + c
                w.writerow([0, 2015 + k, k + 1, 90 * k, city, lat, lon, f"p{k}"])
                img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(gsv / "Images" / city / image_name(city, 0, 2015 + k, k + 1, 90 * k, repr(lat), repr(lon), f"p{k}"))
    return root


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, ["reproduce", "table2", *args], catch_exceptions=False)
    return result


def test_dry_run_lists_the_whole_grid_with_the_published_numbers(tmp_path):
    res = invoke(["--dry-run", "--out", str(tmp_path / "t2"), "--data-root", str(tmp_path / "nothing")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "5 runs (0 done, 5 to run), protocol paper" in out
    for method in ("mixvpr", "cricavpr", "salad", "netvlad", "anyloc"):
        assert f"] {method} / jpeg10" in out
    assert "nordland 31.05 → Δ +15.00" in out and "msls 48.04 → Δ +0.99" in out  # MixVPR, AnyLoc (Table II)
    assert "distilled (ickd+triplet)" in out and out.count("finetuned (multisimilarity)") == 4  # no AnyLoc finetune
    assert re.search(r"gsv-cities \(train\): MISSING: .*\n\s+get it: Download GSV-Cities", out)
    assert re.search(r"msls \(test\): MISSING", out)
    assert re.search(r"salad: official \(dino_salad.ckpt\): MISSING; get it from https://github.com/serizba", out)
    assert "cricavpr: centre crop of the native image" in out  # each method's protocol facts


def test_subsets_other_degradations_and_training_sets(tmp_path):
    res = invoke(["--dry-run", "--methods", "netvlad,mixvpr", "--degrade", "jpeg10,res360p", "--test", "nordland",
                  "--out", str(tmp_path / "t2"), "--weights", "random"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "4 runs" in res.output
    assert "] netvlad / res360p-q95" in res.output  # the authors' cv2.imwrite step
    assert "train pitts250k" in res.output and "train gsv-cities" in res.output
    assert res.output.count("no published numbers for this cell") == 2
    assert "tokyo247" not in res.output.split("datasets:")[1]
    bad = invoke(["--dry-run", "--methods", "mixvprr", "--out", str(tmp_path / "t2")])
    assert bad.exit_code != 0 and 'Did you mean "mixvpr"' in bad.output


@pytest.mark.slow
def test_smoke_run_end_to_end_then_skipped_then_resumed(tmp_path):
    root = write_paper_data(tmp_path / "data")
    args = ["--methods", "netvlad", "--weights", "random", "--max-steps", "2", "--data-root", str(root),
            "--out", str(tmp_path / "t2"), "--cache-dir", str(tmp_path / "cache"), *QUICK]  # fmt: skip
    res = invoke(args)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "t2" / "netvlad__jpeg10"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["protocol"] == "paper" and metrics["run"]["untrained"] is True
    assert set(metrics["datasets"]) == {"msls", "nordland", "tokyo247"}
    assert list(metrics["datasets"]["nordland"]["rows"]) == ["pretrained_clean", "pretrained_degraded", "finetuned", "distilled"]
    md = (tmp_path / "t2" / "results.md").read_text()
    assert "UNTRAINED" in md and "Published numbers: Distillation Improves" in md
    # the distilled row: loqi's Δ, the paper's Δ, and their difference, per test set and N
    rows = {line.split("|")[3].strip(): line.split("|")[4:-1] for line in md.splitlines() if "| netvlad | distilled (mse) |" in line}
    ds = metrics["datasets"]["nordland"]["rows"]
    ours = ds["distilled"]["R@1"] - ds["pretrained_degraded"]["R@1"]
    paper = paper_table()["methods"]["netvlad"]["distilled"]["nordland"][0]
    assert float(rows["loqi"][4]) == pytest.approx(ours, abs=0.005)
    assert float(rows["paper"][4]) == paper == 0.54
    assert float(rows["loqi − paper"][4]) == pytest.approx(ours - paper, abs=0.006)
    again = invoke(args)
    assert again.exit_code == 0 and "done, skipped" in again.output and "running" not in again.output, again.output
    (run_dir / "metrics.json").unlink()  # as if killed before the report: training resumes, evaluations come from the cache
    resumed = invoke(args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming distill" in resumed.output and "(descriptors from cache)" in resumed.output
    other = invoke([*args[:5], "3", *args[6:]])  # another --max-steps must not be reported as this run
    assert other.exit_code != 0 and "finished run with other settings" in other.output
