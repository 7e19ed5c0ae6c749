"""Report files from hand-made results: metrics.json schema, Table II deltas, CSV, plots, `loqi report`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core.errors import DataError
from loqi_core.evaluation.results import EvalResult
from loqi_core.report.results import Report, combine, load_metrics, results_markdown, table_markdown


def _images(folder: Path, n: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i}.png"
        Image.fromarray(np.full((24, 32, 3), 30 * i, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _result(tmp_path: Path, dataset: str, recalls: dict[str, float], untrained: bool = False) -> EvalResult:
    db = _images(tmp_path / dataset / "db", 4, "d")
    q = _images(tmp_path / dataset / "q", 3, "q")
    preds = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0]])
    gt = [np.array([0]), np.array([0]), np.array([], dtype=np.int64)]
    protocol = {"database": "degraded (jpeg10)", "queries": "degraded (jpeg10)", "encoder": "both by the model",
                "positives": "within 25 m", "queries_without_positives": "count as misses (1 of 3)", "search": "flat",
                "temporal": "not temporal", "precision": "fp32", "untrained": untrained}  # fmt: skip
    return EvalResult(dataset, recalls, preds, np.linspace(1, 0, 12).reshape(3, 4).astype(np.float32), gt, protocol, db, q)


def R(*v: float) -> dict[str, float]:
    return dict(zip(["R@1", "R@2", "R@5", "R@10"], v))


@pytest.fixture()
def report(tmp_path):
    rep = Report({"kind": "run", "method": "m", "degrade": "jpeg10", "untrained": False}, [1, 2, 5, 10])
    rep.add("pretrained_clean", _result(tmp_path, "nordland", R(57.8, 60, 70, 80)))
    rep.add("pretrained_degraded", _result(tmp_path, "nordland", R(31.1, 40, 50, 60)))
    rep.add("distilled", _result(tmp_path, "nordland", R(46.1, 45, 50.5, 59)), loss="ickd")
    rep.add("pretrained_degraded", _result(tmp_path, "msls", R(10, 20, 30, 40)))
    rep.add("distilled", _result(tmp_path, "msls", R(12.5, 20, 30, 40)), loss="ickd")
    return rep


def test_metrics_schema(report):
    m = report.metrics()
    assert m["schema"] == "loqi.metrics/1" and m["recall_at"] == [1, 2, 5, 10]
    assert list(m["datasets"]) == ["nordland", "msls"]
    nord = m["datasets"]["nordland"]
    assert nord["rows"]["pretrained_degraded"] == R(31.1, 40, 50, 60)
    assert nord["n_database"] == 4 and nord["n_queries"] == 3 and nord["queries_without_positives"] == 1
    assert m["rows"]["distilled"]["loss"] == "ickd"
    assert set(nord["protocols"]) == {"pretrained_clean", "pretrained_degraded", "distilled"}


def test_table_ii_deltas_against_pretrained_degraded(report):
    lines = table_markdown(report.metrics())
    assert lines[0] == "|  | nordland R@1 | R@2 | R@5 | R@10 | msls R@1 | R@2 | R@5 | R@10 |"
    assert lines[2] == "| Pretrained, clean images | 57.80 | 60.00 | 70.00 | 80.00 | – | – | – | – |"
    assert lines[3] == "| Pretrained, jpeg10 | 31.10 | 40.00 | 50.00 | 60.00 | 10.00 | 20.00 | 30.00 | 40.00 |"
    assert lines[4] == ("| Distilled, jpeg10 Δ | +15.00 (46.10) | +5.00 (45.00) | +0.50 (50.50) | -1.00 (59.00) "
                        "| +2.50 (12.50) | +0.00 (20.00) | +0.00 (30.00) | +0.00 (40.00) |")


def test_write_all_files(report, tmp_path):
    out = tmp_path / "run"
    report.write(out, grid_queries=2, grid_k=3)
    assert load_metrics(out)["datasets"]["msls"]["rows"]["distilled"]["R@1"] == 12.5
    assert "UNTRAINED" not in (out / "results.md").read_text()
    with open(out / "predictions" / "nordland__distilled.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["first_positive_rank"] for r in rows] == ["1", "2", ""]
    assert rows[1]["top_k"] == "1 0 3 2" and rows[1]["top_k_correct"] == "0100"
    assert rows[2]["n_positives"] == "0"
    for name in ("recall.png", "grids/nordland__distilled.png", "grids/msls__pretrained_degraded.png"):
        with Image.open(out / name) as img:
            assert img.width > 50


def test_untrained_is_stated_everywhere(tmp_path):
    rep = Report({"kind": "eval", "method": "m", "degrade": "jpeg10", "untrained": True}, [1, 2, 5, 10])
    rep.add("pretrained_degraded", _result(tmp_path, "d", R(1, 2, 3, 4), untrained=True))
    rep.write(tmp_path / "u", grid_queries=1)
    assert "UNTRAINED" in (tmp_path / "u" / "results.md").read_text()
    assert (tmp_path / "u" / "predictions" / "d__pretrained_degraded.csv").read_text().startswith("# UNTRAINED")
    assert json.loads((tmp_path / "u" / "metrics.json").read_text())["run"]["untrained"] is True
    # the plots carry a red banner: compare against the trained version of the same chart
    rep.run["untrained"] = False
    rep.write(tmp_path / "t", grid_queries=1)
    a = np.asarray(Image.open(tmp_path / "u" / "recall.png").convert("RGB")).astype(int)
    b = np.asarray(Image.open(tmp_path / "t" / "recall.png").convert("RGB")).astype(int)
    red = lambda x: ((x[..., 0] > 150) & (x[..., 1] < 60) & (x[..., 2] < 60)).sum()  # noqa: E731
    assert red(a) > red(b) + 50


def test_combine_runs(report, tmp_path):
    report.write(tmp_path / "a", grid_queries=0)
    report.run["degrade"] = "jpeg20"
    report.write(tmp_path / "b", grid_queries=0)
    out = combine([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")
    text = (out / "report.md").read_text()
    assert "## m jpeg10" in text and "## m jpeg20" in text
    # one table over both runs (absolute recall), then each run's own Table II
    combined = text.split("## All runs", 1)[1].split("## m jpeg10", 1)[0]
    lines = [line for line in combined.splitlines() if line.startswith("| m jpeg")]
    assert len(lines) == 6 and sum("jpeg20" in line for line in lines) == 3
    distilled_a = next(line for line in lines if line.startswith("| m jpeg10") and "Distilled" in line)
    cells = distilled_a.strip("| ").split(" | ")
    assert cells[2:10] == ["46.10", "45.00", "50.50", "59.00", "12.50", "20.00", "30.00", "40.00"]  # absolute recall
    assert "| – |" in next(line for line in lines if "clean" in line.lower())  # no msls row for clean images
    assert len(json.loads((out / "report.json").read_text())["runs"]) == 2
    assert (out / "recall.png").exists()
    assert "Protocol" in results_markdown(load_metrics(tmp_path / "a"))


def test_bad_run_directories(tmp_path):
    with pytest.raises(DataError, match="no metrics.json"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"schema": "other"}')
    with pytest.raises(DataError, match="not a loqi metrics file"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_metrics(tmp_path)
