"""Sequence matching (SeqSLAM): each step against a hand computation, the whole search against a plain loop written
from the definitions, the stream against the offline search, and `--sequence` through the engine and the commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import loqi_core.evaluation.sequence as seq
from loqi_core.cli import cli
from loqi_core.config import EvalConfig
from loqi_core.data.datasets import load_dataset
from loqi_core.data.sets import ImageList
from loqi_core.data.sets import TestSet as VPRTestSet
from loqi_core.errors import ConfigError, DataError
from loqi_core.evaluation.cache import EvalCache
from loqi_core.evaluation.engine import describe_protocol, evaluate
from loqi_core.evaluation.search import recall_at_n, search
from loqi_core.evaluation.sequence import (
    SequenceParams,
    SequenceStream,
    Traverses,
    difference,
    enhance_contrast,
    sequence_scores,
    sequence_search,
    similarity_matrix,
    top_k,
    traverses_of,
)
from loqi_core.models.model import build_model
from loqi_core.report.results import Report
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin

R2, R3 = math.sqrt(2), math.sqrt(3)


# ---- the three steps, by hand ---------------------------------------------------------------------


def test_difference_matrix_is_the_distance_of_unit_descriptors():
    sim = np.array([[1.0, 0.5, 0.875, -1.0, 0.68, 1.0000001]])  # the last: a rounding error above 1
    assert np.allclose(difference(sim), [[0.0, 1.0, 0.5, 2.0, 0.8, 0.0]])
    a, b = np.array([0.6, 0.8]), np.array([1.0, 0.0])
    assert math.isclose(difference(np.array([[a @ b]]))[0, 0], np.linalg.norm(a - b))


def test_traverses_list_every_image_in_capture_order():
    t = Traverses.of([[3, 4], [2, 1, 0]], 6)  # image 5 is in no run: a traverse of its own, last
    assert t.order.tolist() == [3, 4, 2, 1, 0, 5]
    assert t.first.tolist() == [0, 0, 2, 2, 2, 5] and t.last.tolist() == [1, 1, 4, 4, 4, 5]
    assert t.position.tolist() == [0, 1, 0, 1, 2, 0] and t.count == 3
    with pytest.raises(DataError, match="twice"):
        Traverses.of([[0, 1], [1, 2]], 3)


def test_contrast_enhancement_by_hand_stays_inside_each_traverse():
    database = Traverses.of([[3, 4], [2, 1, 0]], 5)  # columns below are in capture order: 3, 4 | 2, 1, 0
    d = np.array([[1.0, 3.0, 2.0, 4.0, 9.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    # window 2: one frame either side. Traverse A = (1, 3): mean 2, sd 1. Traverse B: (2, 4) | (2, 4, 9) | (4, 9)
    sd_249 = math.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 3)
    expected = [[-1.0, 1.0, -1.0, (4 - 5) / sd_249, (9 - 6.5) / 2.5], [0.0] * 5]  # a flat window gives 0
    assert np.allclose(enhance_contrast(d, database, 2), expected)
    # window 4: two frames either side; traverse A still ends at its second frame (never reaches into B)
    wide = enhance_contrast(d, database, 4)
    assert np.allclose(wide[0], [-1.0, 1.0, (2 - 5) / sd_249, (4 - 5) / sd_249, (9 - 5) / sd_249])


def test_velocities_and_offsets_by_hand():
    p = SequenceParams(5)  # the paper's V 0.8..1.2 step 0.1
    assert p.velocities().tolist() == [0.8, 0.9, 1.0, 1.1, 1.2]
    # round(v·τ), τ = 0..4: 0.8 → 0 1 2 2 3; 0.9, 1.0, 1.1 → 0 1 2 3 4; 1.2 → 0 1 2 4 5 (distinct rows kept)
    assert p.offsets(1.0).tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 4, 5]]
    assert SequenceParams(4, v_min=1, v_max=1).offsets(0.5).tolist() == [[0, 1, 1, 2]]  # halves round up
    assert SequenceParams(3, v_min=1, v_max=1).offsets(10.0).tolist() == [[0, 10, 20]]  # Nordland's 1-in-10 queries
    for bad in (dict(length=0), dict(length=3, window=1), dict(length=3, v_min=1.3), dict(length=3, v_step=0)):
        with pytest.raises(ConfigError):
            SequenceParams(**bad)


def test_velocity_search_by_hand():
    # database: two traverses of three frames (0 1 2 | 3 4 5); velocities 1 and 2; sequences of up to 3 frames
    database = Traverses.of([[0, 1, 2], [3, 4, 5]], 6)
    offsets = SequenceParams(3, v_min=1, v_max=2, v_step=1).offsets(1.0)
    assert offsets.tolist() == [[0, 1, 2], [0, 2, 4]]
    e = np.array([[-1.0, 0, 0, 0, 0, 2], [0, 0, -1, 0, 3, 0], [0, -2, 0, 1, -1, -1]])
    # the sequence ending at row 2 (three frames): S = sum over the steps kept / sqrt(steps kept), min over v
    #   j=0: every v keeps row 2 only: 0.      j=1: v1 (-2 + 0)/√2, v2 -2 (one step) → -2
    #   j=2: v1 (0 + 0 - 1)/√3, v2 (0 + 0)/√2 → -1/√3
    #   j=3: first frame of traverse B, row 2 only: 1 (E[1, 2] lies in traverse A: never used)
    #   j=4: v1 (-1 + 0)/√2, v2 -1 → -1.   j=5: v1 (-1 + 3 + 0)/√3, v2 (-1 + 0)/√2 → -1/√2
    ending_2 = [0.0, -2.0, -1 / R3, 1.0, -1.0, -1 / R2]
    # row 1 (two frames): j=1: v1 (0 - 1)/√2, v2 0 → -1/√2; j=2: v1 (-1 + 0)/√2, v2 (-1 - 1)/√2 → -√2;
    #   j=4: v1 (3 + 0)/√2, v2 3 → 3/√2; j=5: v1 (0 + 0)/√2, v2 (0 + 0)/√2 → 0
    ending_1 = [0.0, -1 / R2, -R2, 0.0, 3 / R2, 0.0]
    ending_0 = e[0].tolist()  # one frame: its own enhanced row
    assert np.allclose(sequence_scores(e, [2, 1, 0], database, offsets), [ending_2, ending_1, ending_0])
    indices, values = top_k(np.array([ending_2]), 3)
    assert indices.tolist() == [[1, 4, 5]] and np.allclose(values, [[-2.0, -1.0, -1 / R2]])


def test_top_k_breaks_ties_by_the_lower_index_and_pads():
    indices, values = top_k(np.array([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]), 6)
    assert indices.tolist() == [[1, 2, 3, 0, -1, -1], [0, 1, 2, 3, -1, -1]]
    assert np.isinf(values[:, 4:]).all() and values[0, :4].tolist() == [1.0, 1.0, 2.0, 3.0]


# ---- the whole search --------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference(db, q, db_runs, q_runs, length, window, velocities, rate):
    """SeqSLAM from the module's docstring, one number at a time (no shared code with the module)."""
    where = {i: (r, p) for r, run in enumerate(db_runs) for p, i in enumerate(run)}
    scores = np.full((len(q), len(db)), np.inf)
    for q_run in q_runs:
        enhanced = {}
        for t in q_run:
            dist = {i: math.sqrt(max(0.0, 2 - 2 * float(np.float32(q[t] @ db[i])))) for i in range(len(db))}
            for i in range(len(db)):
                run, p = where[i]
                lo, hi = max(0, p - window // 2), min(len(db_runs[run]), p + window // 2 + 1)
                near = [dist[db_runs[run][w]] for w in range(lo, hi)]
                mean, sd = np.mean(near), np.std(near)
                enhanced[t, i] = 0.0 if sd <= 1e-12 else (dist[i] - mean) / sd
        for pos, t in enumerate(q_run):
            for j in range(len(db)):
                run, p = where[j]
                for v in velocities:
                    kept = []
                    for tau in range(min(length, pos + 1)):
                        o = math.floor(rate * v * tau + 0.5 + 1e-9)
                        if o <= p:
                            kept.append(enhanced[q_run[pos - tau], db_runs[run][p - o]])
                    scores[t, j] = min(scores[t, j], sum(kept) / math.sqrt(len(kept)))
    return scores


def test_sequence_search_equals_a_plain_loop_from_the_definitions(monkeypatch):
    rng = np.random.default_rng(3)
    db, q = _unit(rng.normal(size=(23, 8))), _unit(rng.normal(size=(17, 8)))
    db_runs = [list(rng.permutation(23)[:15]), []]  # capture order is not index order; 8 images in no run
    db_runs[1] = [i for i in range(23) if i not in db_runs[0]][::-1]
    q_runs = [list(range(16, 6, -1)), list(range(0, 7))]
    params = SequenceParams(4, window=4, v_min=0.5, v_max=1.5, v_step=0.5)
    expected = _reference(db, q, db_runs, q_runs, 4, 4, [0.5, 1.0, 1.5], 1.3)
    want_idx, want_scores = top_k(expected, 5)
    monkeypatch.setattr(seq, "CHUNK_VALUES", 23 * 3)  # chunks of 3 queries: sequences reach back across chunks
    idx, scores = sequence_search(db, q, Traverses.of(db_runs, 23), Traverses.of(q_runs, 17), params, 5, rate=1.3)
    assert np.array_equal(idx, want_idx) and np.allclose(scores, want_scores)


def test_stream_gives_the_offline_numbers_frame_by_frame():
    rng = np.random.default_rng(4)
    db, q = _unit(rng.normal(size=(30, 8))), _unit(rng.normal(size=(12, 8)))
    database, params = Traverses.of([list(range(15)), list(range(29, 14, -1))], 30), SequenceParams(5, window=6)
    idx, scores = sequence_search(db, q, database, Traverses.of([list(range(12))], 12), params, 4, rate=1.0)
    stream = SequenceStream(database, params, rate=1.0)
    for t in range(12):
        got_idx, got_scores = top_k(stream.push(similarity_matrix(q[t : t + 1], db)[0])[None], 4)
        assert np.array_equal(got_idx[0], idx[t])
        np.testing.assert_allclose(got_scores[0], scores[t], rtol=0, atol=1e-12)  # one frame alone: the same numbers
    stream.reset()  # after a reset the next frame is a sequence of one: its own enhanced row
    alone = enhance_contrast(difference((q[5] @ db.T)[None, database.order]), database, 6)[0]
    assert np.allclose(stream.push(q[5] @ db.T), alone[np.argsort(database.order)])


def test_similarity_is_float64_and_the_same_for_one_row_or_many():
    rng = np.random.default_rng(8)
    db, q = _unit(rng.normal(size=(500, 64))), _unit(rng.normal(size=(40, 64)))
    many = similarity_matrix(q, db)
    one = np.concatenate([similarity_matrix(q[t : t + 1], db) for t in range(len(q))])
    exact = np.array([[sum(float(a) * float(b) for a, b in zip(qq, x)) for x in db] for qq in q[:3]])
    assert many.dtype == np.float64 and np.abs(many - one).max() < 1e-15 and np.abs(many[:3] - exact).max() < 1e-15


def test_sequences_recover_a_route_that_single_frames_confuse():
    # a route of 200 places; each query is its place's descriptor under heavy noise: one frame alone is often
    # wrong, ten consecutive frames along the route rarely are
    rng = np.random.default_rng(0)
    db = _unit(rng.normal(size=(200, 32)))
    q = _unit(db + rng.normal(scale=0.45, size=db.shape))
    truth = [np.array([i]) for i in range(200)]
    frame = recall_at_n(search(db, q, 1, "flat")[0], truth, [1])["R@1"]
    order = Traverses.of([list(range(200))], 200)
    idx, _ = sequence_search(db, q, order, order, SequenceParams(10), 1)
    sequence = recall_at_n(idx, truth, [1])["R@1"]
    assert frame < 60 and sequence > 90, (frame, sequence)


# ---- through the engine, the report and the commands ---------------------------------------------------


def write_route(root: Path, frames: int = 24, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """A gmberton-layout route: database and queries in two folders of consecutive frames 10 m apart (frame index
    in field 7, so ``?order=frame`` finds the capture order); each query is its frame under noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    for f in range(frames):
        base = rng.integers(0, 256, (h // 4, w // 4, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR)).astype(np.float64)
        noisy = np.clip(base + rng.normal(0, 30, base.shape), 0, 255)
        for part, img in (("database", base), ("queries", noisy)):
            folder = root / "images" / "test" / part / f"part{f * 2 // frames}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"@0.00@{10.0 * f:.2f}@@@@@{f}@@@@@@@@.png")
    return root


@pytest.fixture()
def route(tmp_path):
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        yield plugins, build_model("tiny", weights="random"), write_route(tmp_path / "route"), tmp_path


def test_engine_adds_sequence_recall_from_the_same_descriptors(route):
    plugins, model, root, tmp_path = route
    test = load_dataset(f"folder:{root}?order=frame", "test")
    cache = EvalCache(tmp_path / "cache")
    config = EvalConfig(batch_size=4, num_workers=0)
    plain = evaluate(model, test, "blur3", config=config, cache=cache, device="cpu")
    assert plain.sequence is None and "sequence" not in plain.protocol
    result = evaluate(model, test, "blur3", config=config.model_copy(update={"sequence": 4}), cache=cache, device="cpu")
    assert result.cache["descriptors_cached"] == [True, True]  # no re-encoding
    assert result.recalls == plain.recalls and np.array_equal(result.predictions, plain.predictions)
    database, queries = traverses_of(test)
    assert database.count == 2 and queries.count == 2
    db, q = result.database_descriptors, result.query_descriptors
    idx, _ = sequence_search(db, q, database, queries, SequenceParams(4), 10)
    assert np.array_equal(result.sequence.predictions, idx)
    assert result.sequence.recalls == recall_at_n(idx, result.ground_truth, [1, 2, 5, 10])
    assert "sequence matching: SeqSLAM over the 4 frame(s)" in describe_protocol(result.protocol)
    assert "2 database and 2 query traverse(s)" in result.protocol["sequence"]

    report = Report({"kind": "eval", "method": "tiny", "degrade": "blur3"}, [1, 2, 5, 10])
    report.add("pretrained_degraded", result)
    report.write(tmp_path / "out", grid_queries=0)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    block = metrics["datasets"]["route"]["sequence"]
    assert {k: block[k] for k in ("length", "window", "v_min", "v_max", "v_step", "rate")} == {
        "length": 4, "window": 10, "v_min": 0.8, "v_max": 1.2, "v_step": 0.1, "rate": 1.0}  # fmt: skip
    assert block["rows"]["pretrained_degraded"] == {k: round(v, 4) for k, v in result.sequence.recalls.items()}
    frame_rows = metrics["datasets"]["route"]["rows"]
    assert frame_rows["pretrained_degraded"] == {k: round(v, 4) for k, v in plain.recalls.items()}
    md = (tmp_path / "out" / "results.md").read_text()
    frame, sequence = plain.recalls["R@1"], result.sequence.recalls["R@1"]
    assert "## Sequence matching" in md and f"| Pretrained, blur3 | {frame:.2f} → {sequence:.2f} |" in md
    assert (tmp_path / "out" / "recall.png").exists()


def test_label_free_route_gets_sequence_rankings_without_recall(route):
    _, model, root, tmp_path = route
    test = load_dataset(f"folder:{root}?order=frame&labels=none", "test")
    config = EvalConfig(sequence=4, num_workers=0, recall=[1, 5])
    result = evaluate(model, test, "none", config=config, cache=EvalCache(tmp_path / "cache"), device="cpu")
    assert result.ground_truth is None and result.sequence.recalls == {}
    assert result.sequence.predictions.shape == (24, 10) and (result.sequence.predictions >= 0).all()
    report = Report({"kind": "eval"}, [1, 5])
    report.add("model", result)
    metrics = report.write(tmp_path / "out", grid_queries=0)
    assert metrics["datasets"]["route"]["sequence"]["rows"] == {"model": {}}
    table = (tmp_path / "out" / "results.md").read_text().split("## Sequence matching")[1].split("Each cell")[0]
    assert table.splitlines()[-2].endswith(" | – | – |")  # the model's line: no recall either way


def test_recall_plot_draws_a_line_per_sequence_row(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from loqi_core.report import plot, results

    drawn = {}
    monkeypatch.setattr(plot, "recall_chart", lambda panels, *a: drawn.update(panels) or SimpleNamespace(save=print))
    metrics = {"recall_at": [1], "rows": {"distilled": {"label": "Distilled, jpeg10"}}, "datasets": {"set": {
        "rows": {"distilled": {"R@1": 10.0}}, "sequence": {"length": 5, "rows": {"distilled": {"R@1": 30.0}}}}}}
    results.write_recall_plot(tmp_path / "r.png", [metrics])
    assert drawn == {"set": {"Distilled, jpeg10": {"R@1": 10.0}, "Distilled, jpeg10, sequence L=5": {"R@1": 30.0}}}


def test_a_test_set_without_capture_order_is_refused(route):
    _, model, root, tmp_path = route
    unordered = load_dataset(f"folder:{root}", "test")
    with pytest.raises(ConfigError, match='test set "route": its database and queries have no capture order'):
        evaluate(model, unordered, "none", config=EvalConfig(sequence=3, num_workers=0), cache=EvalCache(tmp_path))
    half = VPRTestSet("half", ImageList(["a.png"], sequences=[[0]]), ImageList(["b.png"]))
    with pytest.raises(ConfigError, match="its queries have no capture order"):
        traverses_of(half)


def test_sequence_flag_through_eval_and_its_one_line_refusal(route):
    _, _, root, tmp_path = route
    common = ["eval", "--method", "tiny", "--weights", "random", "--degrade", "blur3", "--sequence", "3",
              "--cache-dir", str(tmp_path / "cache"), "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0"]
    ok = CliRunner().invoke(cli, [*common, "--dataset", f"folder:{root}?order=frame", "--out", str(tmp_path / "e")],
                            catch_exceptions=False)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "sequence L=3" in ok.output and "## Sequence matching" in ok.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["datasets"]["route"]["sequence"]["length"] == 3
    assert json.loads((tmp_path / "e" / "config.json").read_text())["eval"]["sequence"] == 3
    refused = CliRunner().invoke(cli, [*common, "--dataset", f"folder:{root}", "--out", str(tmp_path / "f")])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert 'test set "route": its database and queries have no capture order' in refused.output
    assert "folder:ROOT?order=frame" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "f").exists()  # refused before the run directory was made


def test_run_reports_sequence_recall_for_every_row(route):
    _, _, root, tmp_path = route
    args = ["run", "--method", "tiny", "--weights", "random", "--degrade", "blur3",
            "--train", f"folder:{root}/images/test", "--test", f"folder:{root}?order=frame", "--max-steps", "2",
            "--baseline", "finetune", "--sequence", "5",
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "-s", "distill.batch_size=4",
            "-s", "distill.places_per_batch=2", "-s", "distill.images_per_place=2", "-s", "distill.num_workers=0",
            "-s", "eval.num_workers=0", "-s", "eval.grid_queries=0", "-s", "distill.tensorboard=false"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())["datasets"]["route"]
    rows = {"pretrained_clean", "pretrained_degraded", "finetuned", "distilled", "distilled_queries"}
    assert set(data["sequence"]["rows"]) == set(data["rows"]) == rows
    table = (tmp_path / "run" / "results.md").read_text().split("## Sequence matching")[1].split("Each cell")[0]
    for label in ("Random init, clean images", "Random init, blur3", "Finetuned, blur3", "Distilled, blur3"):  # --weights random
        assert f"| {label} |" in table
