"""``loqi reproduce table2 | table3 | table4 | fig5``: the plans (--dry-run) with every published row, the training
recipe, the files and GPU-hours; and end-to-end smoke runs on tiny generated data in the datasets' own on-disk
formats (--weights random): the whole recipe, killed and resumed, skipped when done."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.experiments.reproduce import GPU_RATES, paper_table

_spec = importlib.util.spec_from_file_location("paper_data", Path(__file__).with_name("paper_data.py"))
paper_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_data)  # type: ignore[union-attr]

QUICK = ["-s", "distill.num_workers=0", "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0", "-s", "distill.tensorboard=false"]
HERE = Path(__file__).resolve().parent


def invoke(table: str, args: list[str]):
    return CliRunner().invoke(cli, ["reproduce", table, *args], catch_exceptions=False)


# ---- the plans ---------------------------------------------------------------------------------------------------


def test_dry_run_lists_every_published_row_the_recipe_the_files_and_gpu_hours(tmp_path):
    res = invoke("table2", ["--dry-run", "--out", str(tmp_path / "t2"), "--data-root", str(tmp_path / "nothing")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "5 runs (0 done, 5 to run), protocol paper" in out
    assert "published numbers: A. Yang, G. Jin, J. Huang, Y. Wang, J.-R. Rizzo, C. Feng. Distillation Improves" in out
    for method in ("mixvpr", "cricavpr", "salad", "netvlad", "anyloc"):
        assert f"] {method} / jpeg10" in out
    # every published row, clean included (MixVPR, AnyLoc)
    assert "paper pretrained clean (R@1/R@2/R@5/R@10): msls 82.73/86.67/89.73/91.65" in out
    assert "nordland 31.05/36.12/44.13/51.23" in out and "paper distilled (ickd+triplet) Δ" in out
    assert "msls +0.99/+1.54/+2.68/+2.44" in out
    assert out.count("paper finetuned Δ") == 4  # no AnyLoc finetune, as in the paper
    # the training recipe of each run
    assert out.count("168 images per step") == 5 and out.count("mining: once before training") == 5
    assert "training images: gsv-cities, native size, no crop or resize" in out
    assert "batch norm drifting in every layer" in out and "TF32" in out
    assert out.count("the authors' finetune code is unpublished") == 4
    assert "finetune: triplet (triplet: margin=0.3162, negatives=10, negative_mining=hardest" in out
    assert out.count("finetune: multisimilarity") == 3
    assert re.search(r"gsv-cities \(train\): MISSING: .*\n\s+get it: Download GSV-Cities", out)
    assert "msls (test): MISSING" in out and "[Table I: 18871 database, 11084 queries]" in out
    assert re.search(r"salad: official \(dino_salad.ckpt\): MISSING; get it from https://github.com/serizba", out)
    assert re.search(r"anyloc: vocabulary-indoor \(dinov2_vitg14_l31_value_c32_indoor_c_centers.pt\): MISSING; get it "
                     r"from https://github.com/AnyLoc/DINO/releases/download/v1/", out)  # fmt: skip
    assert "cricavpr: centre crop of the native image" in out  # each method's protocol facts
    # GPU hours from the measured rates: the test sets' Table I sizes are known, the training set's is not
    assert re.search(r"GPU-hours to run \(estimate\): \d+\.\d \+ unknown parts", out)
    msls, nordland, tokyo = 18871 + 11084, 27592 + 2760, 75984 + 315
    assert f"netvlad / jpeg10: {4 * (msls + nordland + tokyo):,} images at 563 img/s" in out  # 4 rows, training unknown
    assert "unknown: training set gsv-cities: not found, size unknown" in out


def test_gpu_rates_are_docs_performance_md_measurements():
    text = (HERE.parent / "docs" / "performance.md").read_text()
    for method, rate in GPU_RATES.items():
        row = re.search(rf"^\s*\| {re.escape(method)}( \(vectorised triplet\))? \| [^|]+ \| [^|]+ \| \d+ \| {rate} \|", text, re.M)
        assert row, f"{method} {rate} img/s is not a 'full img/s' value of docs/performance.md"


def test_subsets_other_degradations_and_training_sets(tmp_path):
    res = invoke("table2", ["--dry-run", "--methods", "netvlad,mixvpr", "--degrade", "jpeg10,res360p", "--test", "nordland",
                            "--out", str(tmp_path / "t2"), "--weights", "random"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "4 runs" in res.output
    assert "] netvlad / res360p-q95" in res.output  # the authors' cv2.imwrite step
    assert "training images: pitts250k" in res.output and "training images: gsv-cities" in res.output
    assert res.output.count("no published numbers for this cell") == 2
    assert "tokyo247" not in res.output.split("datasets:")[1]
    bad = invoke("table2", ["--dry-run", "--methods", "mixvprr", "--out", str(tmp_path / "t2")])
    assert bad.exit_code != 0 and 'Did you mean "mixvpr"' in bad.output


def test_a_method_the_paper_never_used_says_so_in_the_plan(tmp_path):
    res = invoke("table2", ["--dry-run", "--methods", "lite0-gem", "--out", str(tmp_path / "t2")])
    assert res.exit_code == 0, res.output
    assert "no published numbers for this cell" in res.output
    assert "lite0-gem: not one of the paper's methods" in res.output


def test_table3_table4_and_fig5_plans(tmp_path):
    t3 = invoke("table3", ["--dry-run", "--out", str(tmp_path / "t3")]).output
    assert "loqi reproduce table3: 5 runs" in t3 and "training: none (the paper evaluates the pretrained models only)" in t3
    assert "paper pretrained clean (R@1/R@5): tum-lsi 94.09/99.55; gangnam 4.39/13.63; nyc-indoor 41.23/83.76" in t3
    assert "paper pretrained degraded (R@1/R@5): tum-lsi 97.73" not in t3  # AnyLoc clean, not degraded
    assert "tum-lsi 93.64/98.18; gangnam 3.63/11.11; nyc-indoor 36.37/81.07" in t3  # AnyLoc at 90%
    t4 = invoke("table4", ["--dry-run", "--out", str(tmp_path / "t4")]).output
    assert "] netvlad / res180p-q95" in t4 and "distilled with each of mse, ickd+mse" in t4
    assert "paper pretrained (R@1/R@2/R@5/R@10): msls 31.16/37.89/46.36/52.54" in t4
    assert "tokyo247 (ickd+mse) +7.64/+8.28/+7.64/+7.32" in t4
    assert "not in the paper's text: the paper's text gives neither the training resolution nor the test resolution" in t4
    assert "training images: pitts250k" in t4 and "finetune:" not in t4  # no finetune row in Table IV
    f5 = invoke("fig5", ["--dry-run", "--out", str(tmp_path / "f5")]).output
    assert "at 14 levels (res135p+qp30 … res270p+qp48)" in f5 and "distilled with each of ickd, mse, ickd+mse" in f5
    assert "paper: no published numbers (Fig. 5 is a plot" in f5 and "video360 (test): MISSING" in f5
    bad = invoke("fig5", ["--dry-run", "--qps", "30,x", "--out", str(tmp_path / "f5")])
    assert bad.exit_code != 0 and "--qps" in bad.output and "Traceback" not in bad.output


# ---- smoke runs --------------------------------------------------------------------------------------------------


def _smoke_args(root: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return ["--weights", "random", "--data-root", str(root), "--out", str(tmp_path / out), "--cache-dir",
            str(tmp_path / "cache"), *QUICK, *extra]  # fmt: skip


@pytest.mark.slow
def test_smoke_table2_runs_the_whole_recipe_killed_resumed_then_skipped(tmp_path):
    """Mining, 168-image steps over a whole epoch of 6 steps (36 places), the finetune, the evaluations; SIGKILLed in
    the middle of step 4, resumed from the checkpoint of step 2 with the mined tuples from the cache."""
    root = paper_data.write_paper_data(tmp_path / "data", size=(16, 24))
    args = ["--methods", "netvlad", *_smoke_args(root, tmp_path, "t2", "-s", "distill.checkpoint_every=2")]
    env = {**os.environ, "LOQI_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(HERE / "paper_data.py"), "--kill-at-step", "3", "--", "reproduce", "table2",
                             *args], capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "t2" / "netvlad__jpeg10"
    assert sorted(p.name for p in (run_dir / "distill" / "checkpoints").iterdir() if not p.name.startswith(".")) == ["step-00000002"]
    mined = list((tmp_path / "cache").rglob("mined.npz"))
    assert len(mined) == 1
    stamp = mined[0].stat().st_mtime_ns

    res = invoke("table2", args)
    assert res.exit_code == 0, res.output
    assert "resuming distill" in res.output
    assert mined[0].stat().st_mtime_ns == stamp  # mined once, never again
    summary = json.loads((run_dir / "distill" / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 6  # one epoch: 36 places / 6 per step
    assert summary["images_per_step"] == 168 and summary["mined"] and summary["view_size"] == "native"
    steps = [int(r["step"]) for r in csv.DictReader((run_dir / "distill" / "train_log.csv").open())]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "mined 144 images of gsv-cities with the teacher: 144 anchors" in (run_dir / "distill" / "run.log").read_text()
    tuned = json.loads((run_dir / "finetune" / "summary.json").read_text())
    assert tuned["images_per_step"] == 24 and not tuned["mined"] and tuned["loss"] == "triplet"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["protocol"] == "paper" and metrics["run"]["untrained"] is True
    assert metrics["run"]["protocol_notes"][0].startswith("protocol paper: ")
    assert set(metrics["datasets"]) == {"msls", "nordland", "tokyo247"}
    assert list(metrics["datasets"]["nordland"]["rows"]) == ["pretrained_clean", "pretrained_degraded", "finetuned", "distilled"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["preprocess"]["size"] is None and config["distill"]["mine"] is True

    md = (tmp_path / "t2" / "results.md").read_text()
    assert "UNTRAINED" in md and "Published numbers: A. Yang" in md and "the authors' finetune code is unpublished" in md
    assert "168 images per step" in md and "mining: once before training" in md
    rows = {line.split("|")[3].strip(): line.split("|")[4:-1] for line in md.splitlines() if "| netvlad | distilled (mse) |" in line}
    ds = metrics["datasets"]["nordland"]["rows"]
    ours = ds["distilled"]["R@1"] - ds["pretrained_degraded"]["R@1"]
    paper = paper_table()["table2"]["methods"]["netvlad"]["distilled"]["nordland"][0]
    assert float(rows["loqi"][4]) == pytest.approx(ours, abs=0.005)
    assert float(rows["paper"][4]) == paper == 0.54
    assert float(rows["loqi − paper"][4]) == pytest.approx(ours - paper, abs=0.006)

    again = invoke("table2", args)
    assert again.exit_code == 0 and "done, skipped" in again.output and "running" not in again.output, again.output
    other = invoke("table2", [*args, "--max-steps", "3"])  # another length must not be reported as this run
    assert other.exit_code != 0 and "finished run with other settings" in other.output


@pytest.mark.slow
def test_smoke_table3_evaluates_clean_and_jpeg10(tmp_path):
    root = paper_data.write_paper_data(tmp_path / "data", size=(16, 24))
    res = invoke("table3", ["--methods", "netvlad", "--test", "msls,tokyo247", *_smoke_args(root, tmp_path, "t3")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "t3" / "netvlad" / "metrics.json").read_text())
    assert set(metrics["datasets"]["msls"]["rows"]) == {"pretrained_degraded@none", "pretrained_degraded@jpeg10"}
    md = (tmp_path / "t3" / "results.md").read_text()
    assert "| netvlad | clean | paper | — | — | — | — |" in md  # no published numbers on these sets
    ours = metrics["datasets"]["msls"]["rows"]["pretrained_degraded@jpeg10"]["R@5"]
    assert f"| netvlad | jpeg10 | loqi | {metrics['datasets']['msls']['rows']['pretrained_degraded@jpeg10']['R@1']:.2f} | {ours:.2f} |" in md
    assert not (tmp_path / "t3" / "netvlad" / "distill").exists()  # nothing trained


@pytest.mark.slow
def test_smoke_table4_trains_on_pitts250k_at_reduced_resolution(tmp_path):
    root = paper_data.write_paper_data(tmp_path / "data", size=(32, 48))
    paper_data.write_split(root / "pitts250k", "train", places=12, size=(32, 48), seed=7, per_place=4)
    res = invoke("table4", ["--degrade", "res16p", "--test", "nordland", "--max-steps", "1",
                            *_smoke_args(root, tmp_path, "t4", "-s", "distill.places_per_batch=2")])  # fmt: skip
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "t4" / "netvlad__res16p"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["datasets"]["nordland"]["rows"]) == {"pretrained_clean", "pretrained_degraded", "distilled:mse", "distilled:ickd+mse"}
    assert metrics["run"]["degrade"] == "res16p-q95"
    for loss in ("mse", "ickd+mse"):
        summary = json.loads((run_dir / f"distill-{loss}" / "summary.json").read_text())
        assert summary["mined"] and summary["images_per_step"] == 2 * 4 * 7 and summary["train"] == "pitts250k"
    md = (tmp_path / "t4" / "results.md").read_text()
    assert "| netvlad | pretrained | paper | 3.99 | 5.40 | 8.34 | 10.40 |" in md
    assert "| netvlad | mse Δ | paper | +1.12 | +1.23 | +1.23 | +1.81 |" in md
    assert "| netvlad | ickd+mse Δ | paper | — | — | — | — |" in md  # the paper's best on Nordland is MSE
    assert "Not in the paper's text" in md


def test_fig5_results_plot_r1_against_qp_per_resolution(tmp_path):
    from loqi_core.config import dump_config
    from loqi_core.experiments.reproduce import plan_fig5, run_config, write_fig5

    run = plan_fig5([135, 270], [30, 48], out=tmp_path / "f5")[0]
    rows = {"pretrained_clean": {"R@1": 90.0}}
    for level in run.levels:
        qp = int(level.rsplit("qp", 1)[1])
        rows[f"pretrained_degraded@{level}"] = {"R@1": 80.0 - qp / 2}
        for k, loss in enumerate(run.losses):
            rows[f"distilled:{loss}@{level}"] = {"R@1": 82.0 + k - qp / 2}
    run.out.mkdir(parents=True)
    (run.out / "metrics.json").write_text(json.dumps({"run": {"untrained": False}, "datasets": {"video360": {"rows": rows}}}))
    (run.out / "config.json").write_text(dump_config(run_config(run, {})))
    md = write_fig5([run], tmp_path / "f5").read_text()
    assert "| `res135p+qp30` | 65.00 | 67.00 | 68.00 | 69.00 |" in md and "| `res270p+qp48` | 56.00 | 58.00 | 59.00 | 60.00 |" in md
    assert "The paper shows Fig. 5 as a plot only" in md and "![Fig. 5](fig5.png)" in md
    with Image.open(tmp_path / "f5" / "fig5.png") as img:
        assert img.width >= 2 * 460  # a panel per resolution
