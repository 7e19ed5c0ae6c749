"""End-to-end: `loqi run`, `loqi sweep`, `loqi eval` and `loqi report` on the tiny method with a handful of steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.experiments.runner import PAPER_LOSSES, expand_losses
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

QUICK = ["-s", "distill.batch_size=4", "-s", "distill.places_per_batch=2", "-s", "distill.images_per_place=2",
         "-s", "distill.num_workers=0", "-s", "eval.num_workers=0", "-s", "eval.batch_size=4",
         "-s", "distill.lr=0.001", "-s", "eval.grid_queries=2"]  # fmt: skip


@pytest.fixture()
def env(tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=8)
    with isolated_plugins(("tiny", tiny_plugin)):
        yield tmp_path, root


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def common(tmp_path: Path, root: Path, out: str) -> list[str]:
    # places: each database image and its query lie within 10 m, so triplet/multisimilarity have positives
    return ["--method", "tiny", "--degrade", "blur3", "--weights", "random", "--train", f"folder:{root}/images/test",
            "--test", f"folder:{root}", "--max-steps", "2", "--out", str(tmp_path / out),
            "--cache-dir", str(tmp_path / "cache"), *QUICK]  # fmt: skip


def test_run_writes_the_whole_report(env):
    tmp_path, root = env
    res = invoke(["run", *common(tmp_path, root, "run"), "--baseline", "finetune"])
    out = tmp_path / "run"
    assert "UNTRAINED" in res.output and "database: degraded (blur3); queries: degraded (blur3)" in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema"] == "loqi.metrics/1" and m["run"]["untrained"] is True and m["run"]["loss"] == "mse"
    ds = m["datasets"]["data"]
    assert list(ds["rows"]) == ["pretrained_clean", "pretrained_degraded", "finetuned", "distilled", "distilled_queries"]
    asym = ds["protocols"]["distilled_queries"]
    assert asym["database_weights"] == "random" and "distill" in asym["weights"]
    assert asym["encoder"] == "queries encoded by the model under test, the database by random"
    assert set(ds["rows"]["distilled"]) == {"R@1", "R@2", "R@5", "R@10"}
    assert all(0 <= v <= 100 for r in ds["rows"].values() for v in r.values())
    assert ds["protocols"]["pretrained_clean"]["database"] == "clean"
    assert ds["protocol"]["database"] == "degraded (blur3)" and ds["protocol"]["untrained"] is True
    assert json.loads((out / "config.json").read_text())["out"] == str(out)
    assert "loqi-core" in json.loads((out / "plugins.json").read_text())
    md = (out / "results.md").read_text()
    assert "UNTRAINED" in md and "Distilled, blur3 Δ" in md and "Finetuned, blur3 Δ" in md
    assert "| Random init, clean images |" in md and "Pretrained" not in md  # a random-init model is not pretrained
    for name in ("recall.png", "activations/data.png", "grids/data__distilled.png", "grids/data__pretrained_clean.png"):
        with Image.open(out / name) as img:
            assert img.width > 100 and img.height > 100
    with open(out / "predictions" / "data__distilled.csv") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("# UNTRAINED")
    rows = list(csv.DictReader(lines[1:]))
    assert len(rows) == 8 and len(rows[0]["top_k"].split()) == 8
    assert (out / "distill" / "checkpoints" / "final" / "model.safetensors").exists()
    assert "Distilled, blur3" in (out / "run.log").read_text()

    # started again with the same --out: training resumes (already final) and every evaluation is cached
    again = invoke(["run", *common(tmp_path, root, "run"), "--baseline", "finetune"])
    assert again.output.count("(descriptors from cache)") == 5 and "resuming distill" in again.output
    assert json.loads((out / "metrics.json").read_text())["datasets"]["data"]["rows"] == ds["rows"]


def test_eval_of_the_run_and_report(env):
    tmp_path, root = env
    invoke(["run", *common(tmp_path, root, "run")])
    res = invoke(["eval", "--method", "tiny", "--weights", str(tmp_path / "run"), "--dataset", f"folder:{root}",
                  "--degrade", "blur3", "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"),
                  "--recall", "1 3", "--clean-database", *QUICK[-10:]])  # fmt: skip
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert list(m["datasets"]["data"]["rows"]) == ["model"] and m["recall_at"] == [1, 3]
    assert m["datasets"]["data"]["protocol"]["database"] == "clean"
    assert "distill" in m["datasets"]["data"]["protocol"]["weights"]
    assert "database: clean; queries: degraded (blur3)" in res.output
    rep = invoke(["report", str(tmp_path / "run"), str(tmp_path / "ev"), "--out", str(tmp_path / "rep")])
    assert "tiny blur3" in rep.output and (tmp_path / "rep" / "recall.png").exists()
    assert "| model, blur3 |" in rep.output  # no Δ without a pretrained row to compare with
    combined = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["dir"] for r in combined["runs"]] == [str(tmp_path / "run"), str(tmp_path / "ev")]


def test_each_part_s_citation_is_in_metrics_json_and_results_md(env):
    from types import SimpleNamespace

    from loqi_core.plugin import AggregatorSpec, EncoderSpec, Preprocess, hookimpl
    from loqi_core.testing.tiny import GeMParams, TinyEncoderParams, _encoder, _gem

    tmp_path, root = env
    cited = SimpleNamespace(
        loqi_register_encoders=hookimpl(lambda register: register(EncoderSpec(
            "cited", _encoder, TinyEncoderParams, preprocess=Preprocess(size=(32, 32)), citation="A. Encoder. 2024."))),
        loqi_register_aggregators=hookimpl(lambda register: register(
            AggregatorSpec("cited", _gem, GeMParams, citation="B. Pooling. 2023."))),
    )  # fmt: skip
    with isolated_plugins(("cited", cited), entry_points=False):
        invoke(["eval", "--method", "cited", "--weights", "random", "--dataset", f"folder:{root}", "--degrade", "none", "--out",
                str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"), *QUICK[-10:]])  # fmt: skip
        listing = invoke(["plugins"]).output
    run = json.loads((tmp_path / "ev" / "metrics.json").read_text())["run"]
    assert run["citations"] == {"encoder": {"cited": "A. Encoder. 2024."}, "aggregator": {"cited": "B. Pooling. 2023."}}
    cite = (tmp_path / "ev" / "results.md").read_text().split("## Cite\n", 1)[1]
    assert cite.strip().splitlines() == ["- encoder `cited`: A. Encoder. 2024.", "- aggregator `cited`: B. Pooling. 2023."]
    assert "  cited (encoder): A. Encoder. 2024." in listing and "  cited (aggregator): B. Pooling. 2023." in listing


def test_database_weights_encode_the_database_and_the_model_the_queries(env):
    """A student's queries against its teacher's map: `loqi run`'s asymmetric row, `loqi eval --database-weights`
    and the engine agree with a search of the student's query descriptors in the teacher's database descriptors."""
    import numpy as np

    from loqi_core.data.datasets import load_dataset
    from loqi_core.evaluation.engine import evaluate
    from loqi_core.models.model import build_model

    tmp_path, root = env
    invoke(["run", *common(tmp_path, root, "run"), "--recall", "1 2 3", "-s", "distill.ema=null"])  # 2 raw steps move it
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())["datasets"]["data"]
    res = invoke(["eval", "--method", "tiny", "--weights", str(tmp_path / "run"), "--database-weights", "random",
                  "--dataset", f"folder:{root}", "--degrade", "blur3", "--recall", "1 2 3",
                  "--out", str(tmp_path / "ev"), "--cache-dir", str(tmp_path / "cache"), *QUICK[-10:]])  # fmt: skip
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())["datasets"]["data"]
    assert ev["rows"]["model"] == run["rows"]["distilled_queries"]
    assert "queries encoded by the model under test, the database by random" in res.output

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)  # the run's teacher: random init seeded by the run's seed
    teacher = build_model("tiny", weights="random")
    student = build_model("tiny", weights=str(tmp_path / "run"))
    test = load_dataset(f"folder:{root}", "test")
    kw = dict(device="cpu", cache=None)
    asym = evaluate(student, test, "blur3", database_model=teacher, **kw)
    db = evaluate(teacher, test, "blur3", **kw).database_descriptors
    q = evaluate(student, test, "blur3", **kw).query_descriptors
    assert not np.allclose(db, evaluate(student, test, "blur3", **kw).database_descriptors)  # two different models
    np.testing.assert_array_equal(asym.database_descriptors, db)
    np.testing.assert_array_equal(asym.predictions[:, 0], np.argmax(q @ db.T, axis=1))
    assert round(asym.recalls["R@1"], 4) == run["rows"]["distilled_queries"]["R@1"]
    import loqi_core

    api = loqi_core.evaluate(student, test, "blur3", database_model=teacher, device="cpu", cache=False, num_workers=0)
    np.testing.assert_array_equal(api.predictions, asym.predictions)
    assert run["rows"]["distilled_queries"] not in (run["rows"]["distilled"], run["rows"]["pretrained_degraded"])


def test_run_over_seeds_reports_each_seed_beside_mean_and_spread(env):
    """`loqi run --seeds`: a run per seed under one directory, the teacher's rows from the cache after the first seed,
    and a report whose mean, sd and pooled sign test are those of the seeds' own runs; --val draws a curve."""
    import math

    from loqi_core.report.seeds import sign_test, top1_hits

    tmp_path, root = env
    args = common(tmp_path, root, "seeds")
    args[args.index("--max-steps") + 1] = "4"
    res = invoke(["run", *args, "--seeds", "0,3", "--val", "heldout", "-s", "distill.heldout=2", "-s", "distill.val_every=2"])
    out = tmp_path / "seeds"
    assert res.output.count("(descriptors from cache)") >= 2  # seed 3: the teacher's two rows
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema"] == "loqi.metrics/1" and m["run"]["seeds"] == [0, 3] and m["run"]["eval_seed"] == 0
    ds = m["datasets"]["data"]
    per = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["datasets"]["data"]["rows"] for s in (0, 3)]
    assert json.loads((out / "seed-3" / "config.json").read_text())["seed"] == 3
    assert per[0]["pretrained_degraded"] == per[1]["pretrained_degraded"]  # one teacher, the same queries
    for row in ("distilled", "distilled_queries"):
        values = [p[row]["R@1"] for p in per]
        assert ds["rows"][row]["R@1"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert ds["sd"][row]["R@1"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-4)
        assert ds["seeds"]["3"][row] == per[1][row]
        tests = [sign_test(top1_hits(out / f"seed-{s}" / "predictions" / "data__pretrained_degraded.csv"),
                           top1_hits(out / f"seed-{s}" / "predictions" / f"data__{row}.csv")) for s in (0, 3)]  # fmt: skip
        assert ds["paired"][row]["3"] == list(tests[1])
        assert ds["paired"][row]["pooled"][:2] == [tests[0][0] + tests[1][0], tests[0][1] + tests[1][1]]
    md = (out / "results.md").read_text()
    assert "UNTRAINED" in md and "seed 0 R@1" in md and "seed 3 R@1" in md and "mean ± sd R@1" in md and "pooled over seeds" in md
    assert (out / "recall.png").exists()
    seed_run = json.loads((out / "seed-0" / "metrics.json").read_text())
    assert [s for s, _ in seed_run["validation"]["distill"]["points"]] == [2, 4]
    assert (out / "seed-0" / "validation.png").exists() and "## Validation" in (out / "seed-0" / "results.md").read_text()
    bad = CliRunner().invoke(cli, ["run", *args, "--seeds", "0,0"])
    assert bad.exit_code != 0 and "distinct seeds" in bad.output
    bad = CliRunner().invoke(cli, ["run", *args, "--seeds", "1", "--seed", "2"])
    assert bad.exit_code != 0 and "not both" in bad.output


def test_sweep_shares_the_teacher_and_reports_every_loss(env):
    tmp_path, root = env
    res = invoke(["sweep", *common(tmp_path, root, "sweep"), "--losses", "mse,ickd+0.5*mse,triplet"])
    m = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    rows = list(m["datasets"]["data"]["rows"])
    assert rows == ["pretrained_clean", "pretrained_degraded", "distilled:ickd+0.5*mse", "distilled:mse", "distilled:triplet"]
    for expr in ("mse", "ickd+0.5_mse", "triplet"):
        assert (tmp_path / "sweep" / f"distill-{expr}" / "checkpoints" / "final").is_dir()
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "Distilled ickd+0.5*mse, blur3 Δ" in md
    assert res.output.count("Random init, blur3") >= 1 and "Pretrained" not in res.output  # --weights random
    r = CliRunner().invoke(cli, ["eval", "--method", "tiny", "--weights", str(tmp_path / "sweep"), "--dataset", f"folder:{root}",
                                 "--out", str(tmp_path / "bad")])  # fmt: skip
    assert r.exit_code != 0 and "one student per loss" in r.output and "distill-mse" in r.output
    assert not (tmp_path / "bad").exists()


def test_sweep_over_seeds_and_against_a_database(env):
    """`loqi sweep --seeds` reports every loss over seeds; --database-weights adds each loss's asymmetric row."""
    tmp_path, root = env
    invoke(["sweep", *common(tmp_path, root, "sweeps"), "--losses", "mse,ickd", "--seeds", "1,2", "--database-weights", "random"])
    m = json.loads((tmp_path / "sweeps" / "metrics.json").read_text())
    ds = m["datasets"]["data"]
    assert {"distilled:mse", "distilled:ickd", "distilled_queries:mse", "distilled_queries:ickd"} <= set(ds["rows"])
    assert set(ds["paired"]) == {"distilled:mse", "distilled:ickd", "distilled_queries:mse", "distilled_queries:ickd"}
    assert (tmp_path / "sweeps" / "seed-2" / "distill-ickd" / "checkpoints" / "final").is_dir()
    assert m["rows"]["distilled_queries:mse"]["label"] == "Distilled mse queries vs pretrained database, blur3"


def test_sweep_skips_triplet_on_label_free_training_set(env, tmp_path):
    _, root = env
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, p in enumerate(sorted((root / "images" / "test" / "database").iterdir())):
        (plain / f"img{i}.png").write_bytes(p.read_bytes())
    args = common(tmp_path, root, "sweep2")
    args[args.index("--train") + 1] = f"folder:{plain}"
    res = invoke(["sweep", *args, "--losses", "mse,triplet"])
    m = json.loads((tmp_path / "sweep2" / "metrics.json").read_text())
    assert "distilled:triplet" not in m["datasets"]["data"]["rows"] and "distilled:mse" in m["datasets"]["data"]["rows"]
    assert any("triplet skipped" in n for n in m["datasets"]["data"]["notes"]) and "skipping loss triplet" in res.output


def test_expand_losses():
    assert expand_losses("all") == list(PAPER_LOSSES) and len(PAPER_LOSSES) == 7
    assert set(PAPER_LOSSES) == {"ickd", "mse", "triplet", "ickd+mse", "ickd+triplet", "mse+triplet", "ickd+mse+triplet"}
    assert expand_losses("ickd, mse,ickd") == ["ickd", "mse"]


def test_bad_inputs_are_one_line_errors(env):
    tmp_path, root = env
    r = CliRunner().invoke(cli, ["eval", "--method", "tiny", "--weights", "random", "--dataset", f"folder:{root}",
                                 "--recall", "1 x", "--out", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code != 0 and "--recall" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert r.exit_code != 0 and "metrics.json" in r.output
    r = CliRunner().invoke(cli, ["eval", "--dataset", f"folder:{root}"])
    assert r.exit_code != 0 and "--method" in r.output
