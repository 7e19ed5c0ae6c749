"""Index directories: what they hold, the eval engine's cache reused, IVF-PQ re-ranked exactly, a mismatching
model refused, a damaged index detected, and `loqi index build|info` on the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from loqi_plugin_serve.index import Index, build_index, open_index
from loqi_plugin_serve.record import IndexDirError, read_meta


def _cli():
    from loqi_core.cli import cli
    from loqi_core.plugin import get_plugins

    get_plugins().add_commands(cli)
    return cli


def test_the_index_describes_itself_and_holds_the_eval_engines_descriptors(demo_index, cache_dir, kit):
    from loqi_core import build_model, load_dataset
    from loqi_core.plugin import (
        EvalCache,
        ExtractStats,
        Identity,
        extract,
        get_plugins,
        model_fingerprint,
        model_versions,
    )

    meta = read_meta(demo_index)
    model = build_model("lite0-gem")
    assert meta["model"]["fingerprint"] == model_fingerprint(model)
    assert meta["model"]["weights"] == "imagenet" and meta["model"]["info"]["method"] == "lite0-gem"
    assert meta["model"]["preprocess"]["min_side"] == 128 and meta["dim"] == 192 and meta["database_images"] == 300
    assert meta["degradation"] == "none" and meta["search"]["backend"] == "flat" and "clean" in meta["protocol"]
    assert set(meta["files"]) == {"descriptors.npy", "faiss.index", "names.json", "utm.npy", "geo.npy", "order.npy",
                                 "thumbnails.bin", "thumbnails.npy"}

    index = open_index(demo_index)
    test = load_dataset("demo", "test")
    assert [p.as_posix().endswith("/" + n) for p, n in zip(test.database.paths, index.names)] == [True] * 300
    np.testing.assert_array_equal(index.utm, test.database.positions)
    # the same key as `loqi eval`: this extraction is answered by the cache the index build filled
    stats = ExtractStats()
    key = {"model": model_fingerprint(model), "code": model_versions(model, get_plugins()), "precision": False}
    again = extract(model, test.database, Identity(), cache=EvalCache(cache_dir), key=key, device=None, stats=stats)
    assert stats.descriptors_cached
    np.testing.assert_array_equal(np.asarray(index.descriptors), np.asarray(again))
    assert np.allclose(np.linalg.norm(index.descriptors, axis=1), 1, atol=1e-5)


def test_flat_search_equals_the_eval_engines_search(demo_index):
    from loqi_core.plugin import search

    index = open_index(demo_index)
    queries = np.asarray(index.descriptors[::3]) + 0.01  # perturbed database descriptors: a full ranking per query
    got_i, got_s = index.search(queries, 10)
    want_i, want_s = search(np.asarray(index.descriptors), queries, 10, "flat")
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    assert index.search(queries[:2], 400)[0][:, 300:].tolist() == [[-1] * 100] * 2  # k beyond the database


def test_near_ties_rank_as_loqi_eval_ranks_them(demo_index):
    """Clusters of near-copies (scores an ulp apart): one query at a time, as the server asks, the flat index gives
    loqi eval's ranking and scores exactly, rank k cutting through near-ties included."""
    import faiss

    from loqi_core.plugin import search

    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 96))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    db = np.repeat(base, 5, 0) + 3e-7 * rng.normal(size=(200, 96))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    q = base[rng.integers(0, 40, 60)] + 0.3 * rng.normal(size=(60, 96))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    flat = faiss.IndexFlatIP(96)
    flat.add(db)
    meta = {**open_index(demo_index).meta, "search": {"backend": "flat", "note": ""}}
    index = Index(demo_index, meta, db, flat, [str(i) for i in range(200)], np.full((200, 2), np.nan), None,
                  np.full((200, 3), np.nan), np.full((200, 2), -1))
    want_i, want_s = search(db, q, 5, "flat")
    for j in range(len(q)):
        got_i, got_s = index.search(q[j : j + 1], 5)
        np.testing.assert_array_equal(got_i[0], want_i[j])
        np.testing.assert_array_equal(got_s[0], want_s[j])


def test_ivfpq_index_is_reranked_exactly(demo_index, cache_dir, tmp_path, kit):
    out = build_index(kit.index_config(cache_dir), "demo", tmp_path / "ivf", backend="ivfpq", thumbnails=False,
                      echo=lambda _: None)  # fmt: skip
    flat, ivf = open_index(demo_index), open_index(out)
    assert ivf.meta["search"]["backend"] == "ivfpq" and ivf.meta["search"]["refine"] == 10
    assert type(ivf.faiss_index).__name__ == "IndexIVFPQ" and ivf.meta["thumbnails"] is False
    np.testing.assert_array_equal(np.asarray(ivf.descriptors), np.asarray(flat.descriptors))  # from the cache
    rng = np.random.default_rng(0)
    queries = np.asarray(flat.descriptors) + rng.normal(0, 0.02, flat.descriptors.shape).astype(np.float32)
    got_i, got_s = ivf.search(queries, 5)
    want_i, _ = flat.search(queries, 5)
    exact = np.einsum("qd,qkd->qk", queries, np.asarray(flat.descriptors)[got_i])
    np.testing.assert_allclose(got_s, exact, atol=1e-5)  # scores are exact inner products, not PQ estimates
    assert (got_i[:, 0] == want_i[:, 0]).mean() >= 0.95
    unranked = ivf.meta["search"] | {"refine": 0}
    ivf.meta["search"] = unranked
    pq_i, pq_s = ivf.search(queries, 5)
    assert not np.allclose(pq_s, np.einsum("qd,qkd->qk", queries, np.asarray(flat.descriptors)[pq_i]), atol=1e-5)


def test_a_model_that_does_not_match_the_index_is_refused(demo_index):
    from loqi_plugin_serve.engine import load_engine

    with pytest.raises(IndexDirError) as err:
        load_engine(demo_index, weights="random", device="cpu")
    message = str(err.value)
    assert "fingerprint" in message and "loqi index build --method lite0-gem --weights random" in message


def test_a_damaged_index_is_detected(demo_index, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_index, copy)
    runner = CliRunner()
    assert runner.invoke(_cli(), ["index", "info", str(copy), "--verify"]).exit_code == 0
    data = bytearray((copy / "thumbnails.bin").read_bytes())
    data[5] ^= 1  # same size, other content: only the sha256 check sees it
    (copy / "thumbnails.bin").write_bytes(bytes(data))
    assert runner.invoke(_cli(), ["index", "info", str(copy)]).exit_code == 0
    failed = runner.invoke(_cli(), ["index", "info", str(copy), "--verify"])
    assert failed.exit_code == 1 and "thumbnails.bin: sha256 differs" in failed.output
    with open(copy / "descriptors.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(IndexDirError, match="descriptors.npy: 1000 bytes, expected"):
        open_index(copy)
    with pytest.raises(IndexDirError, match="is not a loqi index"):
        open_index(tmp_path)
    (copy / "index.json").write_text(json.dumps({"format": "loqi-index", "format_version": 1}))
    with pytest.raises(IndexDirError, match="rebuild the index"):
        read_meta(copy)


def test_index_build_and_info_on_the_command_line(demo_index, cache_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-index"
    args = ["index", "build", "--method", "lite0-gem", "--dataset", "demo", "--out", str(out), "--device", "cpu",
            "--cache-dir", str(cache_dir), "-s", "eval.num_workers=0", "--no-thumbnails"]  # fmt: skip
    built = runner.invoke(_cli(), args)
    assert built.exit_code == 0, built.output
    assert "300 images of demo" in built.output and "weights imagenet" in built.output
    np.testing.assert_array_equal(np.load(out / "descriptors.npy"), np.load(demo_index / "descriptors.npy"))
    again = runner.invoke(_cli(), args)
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    forced = runner.invoke(_cli(), [*args, "--force", "--batch-size", "16"])  # the old spelling still works, with a warning
    assert forced.exit_code == 0 and "--batch-size is deprecated in index build: write --eval-batch-size" in forced.output
    info = runner.invoke(_cli(), ["index", "info", str(out)])
    assert info.exit_code == 0 and "lite0-gem" in info.output
    assert "files: 6 intact (sizes checked)" in info.output
    as_json = runner.invoke(_cli(), ["index", "info", str(out), "--json"])
    assert json.loads(as_json.output)["model"]["fingerprint"] == read_meta(demo_index)["model"]["fingerprint"]
    bad = runner.invoke(_cli(), ["index", "build", "--method", "lite0-gem", "--dataset", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and 'Unknown dataset "nope"' in bad.output and "Traceback" not in bad.output


def test_a_random_weight_index_of_a_folder_dataset_is_served_by_its_own_seeded_model(tmp_path, kit):
    """`--weights random` with a seed: the server rebuilds the same random initialisation and accepts it."""
    from loqi_core.plugin import read_image
    from loqi_core.testing.tiny import write_vpr_folder
    from loqi_plugin_serve.engine import load_engine

    root = write_vpr_folder(tmp_path / "data", places=12)
    config = kit.index_config(tmp_path / "cache", **{"model.weights": "random", "seed": 3, "eval.num_workers": None})  # default workers
    out = build_index(config, f"folder:{root}", tmp_path / "index", echo=lambda _: None)
    meta = read_meta(out)
    assert (meta["model"]["weights"], meta["model"]["seed"], meta["database_images"]) == ("random", 3, 12)
    engine = load_engine(out, device="cpu")
    assert engine.index.names[5].startswith("@500500.00@4000000.00@")
    [results], _ = engine.locate([read_image(root / "images/test/database" / engine.index.names[5])], [3])
    assert results[0]["index"] == 5 and results[0]["utm_east"] == 500500.0 and results[0]["score"] > 0.9999


def test_database_weights_encode_the_map_for_another_models_queries(tmp_path, kit):
    """`--database-weights`: the teacher encodes the map, index.json names the student as the model that queries it."""
    import torch

    from loqi_core import build_model
    from loqi_core.plugin import model_fingerprint, save_checkpoint
    from loqi_core.testing.tiny import write_vpr_folder

    root = write_vpr_folder(tmp_path / "data", places=6)
    student = build_model("lite0-gem")
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    weights = save_checkpoint(student, tmp_path / "student")
    cache = tmp_path / "cache"
    plain = build_index(kit.index_config(cache), f"folder:{root}", tmp_path / "plain", echo=lambda _: None)
    runner = CliRunner()
    args = ["index", "build", "--method", "lite0-gem", "--weights", str(weights), "--database-weights", "default",
            "--dataset", f"folder:{root}", "--out", str(tmp_path / "asym"), "--device", "cpu", "--cache-dir", str(cache),
            "-s", "eval.num_workers=0", "--no-thumbnails"]  # fmt: skip
    built = runner.invoke(_cli(), args)
    assert built.exit_code == 0, built.output
    np.testing.assert_array_equal(np.load(tmp_path / "asym" / "descriptors.npy"), np.load(plain / "descriptors.npy"))
    meta = read_meta(tmp_path / "asym")
    assert meta["database_model"]["fingerprint"] == read_meta(plain)["model"]["fingerprint"]
    assert meta["model"]["fingerprint"] == model_fingerprint(build_model("lite0-gem", weights=str(weights)))
    assert meta["model"]["fingerprint"] != meta["database_model"]["fingerprint"] and "database_model" in meta["protocol"]
    assert "database_model" not in read_meta(plain)


def test_a_student_serves_queries_against_its_teachers_index_and_another_is_refused(demo_index, tmp_path, kit):
    """`loqi distill` records the teacher's fingerprint in the student's checkpoint: that student encodes the queries
    against the index its teacher built (answers: the student's encode_batch + loqi eval's flat search of the
    teacher's database); a checkpoint without that lineage is refused, naming why."""
    import torch

    from loqi_core import build_model, distill
    from loqi_core.plugin import encode_batch, model_fingerprint, save_checkpoint, search
    from loqi_core.testing.tiny import write_vpr_folder
    from loqi_plugin_serve.engine import load_engine

    train = write_vpr_folder(tmp_path / "data", places=8) / "images/test/database"  # a folder of 8 images
    torch.set_num_threads(1)
    distill("lite0-gem", "jpeg10", train=f"folder:{train}", loss="mse", out=tmp_path / "run", device="cpu",
            max_steps=2, batch_size=4, lr=1e-3, num_workers=0, tensorboard=False)  # fmt: skip
    engine = load_engine(demo_index, weights=str(tmp_path / "run"), device="cpu")
    teacher = read_meta(demo_index)["model"]["fingerprint"]
    assert engine.lineage is not None and engine.lineage["fingerprint"] == teacher
    assert model_fingerprint(engine.model) != teacher  # the student's own weights encode the queries
    frames = [kit.decoded(p.read_bytes()) for p in kit.database_files(engine.index)[10:13]]
    answers, _ = engine.locate(frames, [5, 5, 5])
    desc = encode_batch(engine.model, frames, engine.device, False)
    want_i, want_s = search(np.asarray(engine.index.descriptors), desc, 5, "flat")
    for got, i, s in zip(answers, want_i, want_s):
        assert [r["index"] for r in got] == i.tolist() and [r["score"] for r in got] == s.tolist()

    torch.manual_seed(0)
    other = build_model("lite0-gem", weights="random")
    save_checkpoint(other, tmp_path / "other", extra={"distilled_from": {"fingerprint": "0" * 24, "method": "lite0-gem"}})
    with pytest.raises(IndexDirError, match="it was distilled from another model \\(fingerprint 0{24}\\)"):
        load_engine(demo_index, weights=str(tmp_path / "other"), device="cpu")
    save_checkpoint(other, tmp_path / "plain")
    with pytest.raises(IndexDirError, match="its checkpoint records no teacher"):
        load_engine(demo_index, weights=str(tmp_path / "plain"), device="cpu")
