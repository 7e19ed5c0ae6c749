"""Descriptors and pairs out (--save-descriptors, --pairs K), the evaluator's conventions in (--database/--queries,
label-free folders), and one meaning per flag (-t, --batch-size): on the tiny method and generated folders."""

from __future__ import annotations

import csv
import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from loqi_core.cli import cli
from loqi_core.config import resolve_config
from loqi_core.data.folders import read_folder_pair
from loqi_core.data.images import read_image
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.errors import ConfigError, DataError
from loqi_core.models.model import build_model
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

QUICK = ["-s", "eval.num_workers=0", "-s", "eval.grid_queries=2", "--eval-batch-size", "4"]
TRAIN = ["-s", "distill.batch_size=4", "-s", "distill.num_workers=0", "-s", "distill.lr=0.001", "--max-steps", "1"]


@pytest.fixture()
def env(tmp_path):
    root = write_vpr_folder(tmp_path / "data", places=8)
    with isolated_plugins(("tiny", tiny_plugin)):
        yield tmp_path, root


def invoke(args: list[str], code: int = 0):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def eval_args(tmp_path: Path, out: str, *data: str) -> list[str]:
    return ["eval", "--method", "tiny", "--weights", "random", "--degrade", "blur3", *data, "--out", str(tmp_path / out),
            "--cache-dir", str(tmp_path / "cache"), *QUICK]  # fmt: skip


def plain_copy(root: Path, target: Path) -> Path:
    """The tiny test set again, every file renamed without @east@north@: a label-free pair of folders."""
    for part in ("database", "queries"):
        (target / part).mkdir(parents=True)
        for i, path in enumerate(sorted((root / "images/test" / part).iterdir())):
            shutil.copy(path, target / part / f"frame_{i:03d}.png")
    return target


def lines(output: str) -> list[str]:
    """The printed lines, progress-bar redraws (carriage returns) split off."""
    return [line.strip() for line in re.split(r"[\r\n]", output)]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---- descriptors and pairs ------------------------------------------------------------------------------


def test_saved_descriptors_are_the_models_and_the_pairs_its_ranking(env):
    tmp_path, root = env
    res = invoke(eval_args(tmp_path, "run", "--test", f"folder:{root}", "--save-descriptors", "--pairs", "3"))
    out = tmp_path / "run"
    folder = out / "descriptors" / "data__pretrained_degraded"
    db, q = np.load(folder / "database.npy"), np.load(folder / "queries.npy")
    db_names, q_names = read_lines(folder / "database.txt"), read_lines(folder / "queries.txt")
    assert db.dtype == np.float32 and q.dtype == np.float32 and db.shape[0] == 8 and q.shape == db.shape
    assert db_names == [f"database/{p.name}" for p in sorted((root / "images/test/database").iterdir())]
    assert q_names == [f"queries/{p.name}" for p in sorted((root / "images/test/queries").iterdir())]
    info = json.loads((folder / "info.json").read_text())
    assert info["root"] == str(root / "images" / "test") and info["dim"] == db.shape[1]
    assert info["database"] == "degraded (blur3)" and info["weights"] == "random"

    # the rows are the model's descriptors of the degraded images, in name order (re-encoded here one by one)
    torch.manual_seed(0)  # the seed the run built its random model with
    model = build_model("tiny", weights="random").eval()
    blur = parse_degradation("blur3")
    with torch.no_grad():
        for names, saved in ((db_names, db), (q_names, q)):
            images = [blur([read_image(root / "images/test" / n)]).images[0] for n in names]
            expected = torch.nn.functional.normalize(model(model.prepare(images))[1], dim=1).numpy()
            np.testing.assert_allclose(saved, expected, atol=1e-5)

    # pairs: 3 lines per query, best first, the same database images as the predictions CSV's top 3
    pairs = [line.split(" ") for line in read_lines(out / "pairs" / "data__pretrained_degraded.txt")]
    assert len(pairs) == 8 * 3 and all(len(p) == 2 for p in pairs)
    with open(out / "predictions" / "data__pretrained_degraded.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for i, row in enumerate(rows):
        top3 = [db_names[int(j)] for j in row["top_k"].split()[:3]]
        assert pairs[3 * i : 3 * i + 3] == [[q_names[i], name] for name in top3]
        scores = q[i] @ db.T  # and that order is the saved descriptors' similarity order
        listed = [scores[db_names.index(name)] for name in top3]
        assert listed == sorted(listed, reverse=True) and listed[0] == pytest.approx(scores.max(), abs=1e-6)
    assert "no recall" not in res.output


def test_pairs_beyond_the_recall_ranks_and_a_smaller_database(env):
    tmp_path, root = env
    invoke(eval_args(tmp_path, "run", "--test", f"folder:{root}", "--pairs", "20", "--recall", "1"))
    pairs = read_lines(tmp_path / "run" / "pairs" / "data__pretrained_degraded.txt")
    assert len(pairs) == 8 * 8  # 20 asked for, the database holds 8: every database image once per query
    for i in range(8):
        block = pairs[8 * i : 8 * i + 8]
        assert len({p.split()[0] for p in block}) == 1 and len({p.split()[1] for p in block}) == 8
    assert not (tmp_path / "run" / "descriptors").exists()  # only what was asked for


def test_loqi_run_saves_every_rows_descriptors_through_the_config_field(env):
    tmp_path, root = env
    args = ["run", "--method", "tiny", "--weights", "random", "--degrade", "blur3", "--train", f"folder:{root}/images/test",
            "-t", f"folder:{root}", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "-s", "eval.save_descriptors=true", "-s", "eval.pairs=2", *QUICK, *TRAIN]  # fmt: skip
    invoke(args)
    rows = ("pretrained_clean", "pretrained_degraded", "distilled")
    for row in rows:
        folder = tmp_path / "run" / "descriptors" / f"data__{row}"
        assert np.load(folder / "database.npy").shape[0] == 8 and len(read_lines(folder / "queries.txt")) == 8
        assert len(read_lines(tmp_path / "run" / "pairs" / f"data__{row}.txt")) == 16
    clean = np.load(tmp_path / "run" / "descriptors" / "data__pretrained_clean" / "queries.npy")
    degraded = np.load(tmp_path / "run" / "descriptors" / "data__pretrained_degraded" / "queries.npy")
    assert not np.allclose(clean, degraded)  # each row its own images: clean vs blurred
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval"]["save_descriptors"] is True


def test_a_failed_descriptor_write_leaves_no_partial_file(env, monkeypatch):
    tmp_path, root = env

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    res = invoke(eval_args(tmp_path, "run", "--test", f"folder:{root}", "--save-descriptors"), code=1)
    folder = tmp_path / "run" / "descriptors" / "data__pretrained_degraded"
    assert "database.npy: No space left on device (the disk is full" in res.output
    assert "Traceback" not in res.output and list(folder.iterdir()) == []


# ---- --database DIR --queries DIR -----------------------------------------------------------------------


def test_database_and_queries_folders_equal_the_test_set_they_form(env):
    tmp_path, root = env
    invoke(eval_args(tmp_path, "a", "--test", f"folder:{root}"))
    invoke(eval_args(tmp_path, "b", "--database", str(root / "images/test/database"),
                     "--queries-folder", str(root / "images/test/queries")))  # fmt: skip
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text())["datasets"] for run in ("a", "b"))
    assert list(b) == ["data"]  # named after the folder above gmberton's images/test/, not "demo" beside it
    assert b["data"]["rows"] == a["data"]["rows"] and b["data"]["labelled"] is True
    config = json.loads((tmp_path / "b" / "config.json").read_text())["eval"]
    assert config["test"] == [] and config["database"] == str(root / "images/test/database")


def test_database_without_queries_is_a_one_line_error(env):
    tmp_path, root = env
    res = invoke(eval_args(tmp_path, "run", "--database", str(root / "images/test/database")), code=1)
    assert "database is set but queries is not" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_database_and_queries_config_fields():
    config = resolve_config(overrides={"eval.database": "/d", "eval.queries": "/q"})
    assert config.eval.test == []  # they replace the default test set ...
    both = resolve_config(overrides={"eval.database": "/d", "eval.queries": "/q", "eval.test": ["demo"]})
    assert both.eval.test == ["demo"]  # ... and join one that is given
    with pytest.raises(ConfigError, match="queries is set but database is not"):
        resolve_config(overrides={"eval.queries": "/q"})
    with pytest.raises(ConfigError, match="no test set"):
        resolve_config(overrides={"eval.test": []})
    with pytest.raises(ConfigError, match="eval.pairs"):
        resolve_config(overrides={"eval.pairs": -1})


# ---- label-free test sets -----------------------------------------------------------------------------


def test_label_free_eval_writes_predictions_grids_pairs_and_descriptors_but_no_recall(env):
    tmp_path, root = env
    plain = plain_copy(root, tmp_path / "plain")
    res = invoke(eval_args(tmp_path, "run", "--database", str(plain / "database"), "--queries", str(plain / "queries"),
                           "--pairs", "2", "--save-descriptors", "--no-cache"))  # fmt: skip
    out = tmp_path / "run"
    noted = [line for line in lines(res.output) if line.startswith("plain ") and "no recall:" in line]
    assert len(noted) == 1 and noted[0].endswith("carry no positions (no @east@north@ in their names): recall needs positions")
    ds = json.loads((out / "metrics.json").read_text())["datasets"]["plain"]
    assert ds["labelled"] is False and ds["rows"] == {"pretrained_degraded": {}} and ds["queries_without_positives"] is None
    assert ds["protocol"]["positives"].startswith("unknown") and ds["protocol"]["positive_radius_m"] is None
    md = (out / "results.md").read_text()
    assert "| Random init, blur3 | – | – | – | – |" in md and "no recall:" in md
    assert not (out / "recall.png").exists()  # nothing to plot, rather than an empty chart
    with open(out / "predictions" / "plain__pretrained_degraded.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert len(rows) == 8 and all(r["n_positives"] == r["top_k_correct"] == r["first_positive_rank"] == "" for r in rows)
    assert all(len(r["top_k"].split()) == 8 for r in rows)
    with Image.open(out / "grids" / "plain__pretrained_degraded.png") as img:
        assert img.width > 100 and img.height > 100
    pairs = read_lines(out / "pairs" / "plain__pretrained_degraded.txt")
    assert len(pairs) == 16 and pairs[0].startswith("queries/frame_000.png database/frame_")
    assert np.load(out / "descriptors" / "plain__pretrained_degraded" / "queries.npy").shape[0] == 8


def test_label_free_loqi_run_trains_and_reports_without_recall(env):
    tmp_path, root = env
    plain = plain_copy(root, tmp_path / "plain")
    args = ["run", "--method", "tiny", "--weights", "random", "--degrade", "blur3", "--train", f"folder:{plain}/database",
            "--test", f"folder:{plain}", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            *QUICK, *TRAIN]  # fmt: skip
    res = invoke(args)
    noted = [line for line in lines(res.output) if line.startswith("plain ") and "no recall:" in line]
    assert len(noted) == 4  # pretrained clean, pretrained degraded, distilled, its queries on the teacher's map
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())["datasets"]["plain"]["rows"]
    assert rows == {"pretrained_clean": {}, "pretrained_degraded": {}, "distilled": {}, "distilled_queries": {}}
    assert "| Distilled, blur3 | – | – | – | – |" in (tmp_path / "run" / "results.md").read_text()
    assert (tmp_path / "run" / "grids" / "plain__distilled.png").exists()


def test_positions_are_read_per_folder_and_a_half_named_folder_is_an_error(env):
    tmp_path, root = env
    plain = plain_copy(root, tmp_path / "plain")
    half = read_folder_pair(root / "images/test/database", plain / "queries")  # positioned database, plain queries
    assert half.database.positions is not None and half.queries.positions is None and not half.labelled
    labelled = read_folder_pair(root / "images/test/database", root / "images/test/queries")
    assert labelled.labelled and labelled.name == "data"
    shutil.copy(plain / "database" / "frame_000.png", root / "images/test/database" / "extra.png")
    with pytest.raises(DataError, match=r"extra.png: file name has no UTM coordinates, but other images"):
        read_folder_pair(root / "images/test/database", root / "images/test/queries")
    skipped = read_folder_pair(root / "images/test/database", root / "images/test/queries", skip_bad=True)
    assert len(skipped.database) == 8 and any("extra.png" in s for s in skipped.skipped)
    res = invoke(eval_args(tmp_path, "run", "--test", f"folder:{root}"), code=1)  # a published-style set stays strict
    assert "extra.png: file name has no UTM coordinates" in res.output


# ---- one meaning per flag -----------------------------------------------------------------------------


def test_old_batch_size_spelling_in_eval_warns_and_still_sets_the_extraction_batch(env):
    tmp_path, root = env
    args = [a for a in eval_args(tmp_path, "run", "--test", f"folder:{root}") if a not in ("--eval-batch-size", "4")]
    res = invoke([*args, "--batch-size", "3"])
    assert "--batch-size is deprecated in eval, run and sweep: write --eval-batch-size" in res.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval"]["batch_size"] == 3
    both = invoke([*args, "--batch-size", "3", "--eval-batch-size", "3", "--out", str(tmp_path / "b")], code=1)
    assert "give --eval-batch-size only" in both.output


def test_distill_t_is_the_deprecated_spelling_of_train(env):
    tmp_path, root = env
    args = ["distill", "--method", "tiny", "--weights", "random", "--degrade", "blur3", "-t", f"folder:{root}/images/test",
            "--out", str(tmp_path / "d"), *TRAIN]  # fmt: skip
    res = invoke(args)
    assert "-t is deprecated in distill and finetune: write --train" in res.output
    assert json.loads((tmp_path / "d" / "config.json").read_text())["distill"]["train"] == f"folder:{root}/images/test"
    assert "-t" not in invoke(["distill", "--help"]).output.split("--train")[0]  # hidden: --train is the flag shown


def test_label_free_levels_table_and_a_labelled_set_beside_it(env):
    tmp_path, root = env
    plain = plain_copy(root, tmp_path / "plain")
    invoke(eval_args(tmp_path, "run", "--test", f"folder:{root}", "--database", str(plain / "database"),
                     "--queries", str(plain / "queries"), "--eval-degrade", "blur3,none"))  # fmt: skip
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(m["datasets"]) == ["data", "plain"]  # --test and the two folders, side by side
    assert m["datasets"]["data"]["labelled"] and set(m["datasets"]["data"]["rows"]["pretrained_degraded@blur3"]) == {
        "R@1", "R@2", "R@5", "R@10"}  # fmt: skip
    assert m["datasets"]["plain"]["rows"] == {"pretrained_degraded@blur3": {}, "pretrained_degraded@none": {}}
    md = (tmp_path / "run" / "results.md").read_text()
    level = next(line for line in md.splitlines() if line.startswith("| `blur3` |"))
    assert level.count("–") == 1 and level.split(" | ")[1].replace(".", "").isdigit()  # data: a number; plain: –
    assert (tmp_path / "run" / "recall.png").exists()  # the labelled set is plotted
