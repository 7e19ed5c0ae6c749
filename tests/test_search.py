"""Search backends and recall@N: a hand-computed case (ties, queries without positives) and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from loqi_core.errors import ConfigError
from loqi_core.evaluation import search as S

BACKENDS = ["flat", "torch"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# Database: 5 unit vectors in 2-D. Indices 1 and 2 are identical (an exact tie), 3 equals 0.
DB = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [-1, 0]], dtype=np.float32)
QUERIES = np.array(
    [
        [1, 0],  # ties 0 and 3 (score 1), then 1 and 2 (score 0), then 4
        [0, 1],  # ties 1 and 2, then 0 and 3, then 4
        [-1, 0],  # 4, then ties 1 and 2, then 0 and 3
        [1, 0],  # no positive at all
    ],
    dtype=np.float32,
)
GT = [np.array([3]), np.array([2, 4]), np.array([0]), np.array([], dtype=np.int64)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_ranking_and_ties(backend):
    idx, scores = S.search(DB, QUERIES, 5, backend)
    # equal scores are ordered by the lower database index
    assert idx[0].tolist() == [0, 3, 1, 2, 4]
    assert idx[1].tolist() == [1, 2, 0, 3, 4]
    assert idx[2].tolist() == [4, 1, 2, 0, 3]
    assert scores[0].tolist() == [1, 1, 0, 0, -1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_straddling_rank_k_is_settled_by_index(backend):
    # k=1 cuts between the tied pair: the lower index must win in every backend
    idx, _ = S.search(DB, QUERIES, 1, backend)
    assert idx[:, 0].tolist() == [0, 1, 4, 0]
    idx, _ = S.search(DB, QUERIES, 3, backend)
    assert idx[2].tolist() == [4, 1, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_recall_hand_computed(backend):
    idx, _ = S.search(DB, QUERIES, 5, backend)
    r = S.recall_at_n(idx, GT, [1, 2, 3, 5])
    # 0-based ranks of the first positive: q0: 3 at 1; q1: 2 at 1; q2: 0 at 3; q3: none -> a miss everywhere
    assert r == {"R@1": 0.0, "R@2": 50.0, "R@3": 50.0, "R@5": 75.0}
    assert S.first_hit_ranks(idx, GT).tolist() == [1, 1, 3, -1]


def test_recall_needs_enough_predictions():
    with pytest.raises(ValueError, match="recall@10"):
        S.recall_at_n(np.zeros((2, 5), dtype=np.int64), [np.array([0])] * 2, [1, 10])


def _brute(db: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = q.astype(np.float64) @ db.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_brute_force_on_random_descriptors(backend, monkeypatch):
    rng = np.random.default_rng(0)
    db, q = _unit(rng.normal(size=(3000, 64))), _unit(rng.normal(size=(200, 64)))
    monkeypatch.setattr(S, "DB_CHUNK_BYTES", 700 * 64 * 4)  # several database chunks, merged
    idx, scores = S.search(db, q, 10, backend)
    ref = _brute(db, q, 10)
    assert np.array_equal(idx, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ref, 1), atol=1e-5)
    gt = [np.flatnonzero(((db - qq) ** 2).sum(1) < 1.7) for qq in q]
    assert S.recall_at_n(idx, gt, [1, 5, 10]) == S.recall_at_n(ref, gt, [1, 5, 10])


def test_memory_mapped_database(tmp_path):
    rng = np.random.default_rng(1)
    db = _unit(rng.normal(size=(500, 32)))
    path = tmp_path / "db.npy"
    np.save(path, db)
    mm = np.load(path, mmap_mode="r")
    q = _unit(rng.normal(size=(20, 32)))
    assert np.array_equal(S.search(mm, q, 5, "flat")[0], _brute(db, q, 5))
    assert np.array_equal(S.search(mm, q, 5, "torch")[0], _brute(db, q, 5))


def test_fewer_database_entries_than_k():
    idx, scores = S.search(DB[:2], QUERIES[:1], 4, "flat")
    assert idx[0].tolist() == [0, 1, -1, -1]
    assert np.isneginf(scores[0, 2:]).all()


def test_ivfpq_finds_most_true_neighbours():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(20, 16))
    db = _unit(centers[rng.integers(0, 20, 1500)] + 0.3 * rng.normal(size=(1500, 16)))
    q = _unit(db[:100] + 0.05 * rng.normal(size=(100, 16)))
    true_nn = _brute(db, q, 1)[:, 0]
    coarse = S.IVFPQParams(nlist=16, m=4, nbits=6, nprobe=4, refine=0)
    idx, _ = S.search(db, q, 10, "ivfpq", ivfpq=coarse)
    assert (idx == true_nn[:, None]).any(1).mean() > 0.5
    fine, scores = S.search(db, q, 10, "ivfpq", ivfpq=S.IVFPQParams(nlist=16, m=4, nbits=6, nprobe=4, refine=10))
    # re-ranking with exact scores: the true neighbour comes first and the scores are exact inner products
    assert (fine[:, 0] == true_nn).mean() > (idx[:, 0] == true_nn).mean() and (fine[:, 0] == true_nn).mean() > 0.9
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, fine, 1), atol=1e-5)
    assert S.ivfpq_settings(5000, 32, S.IVFPQParams()) == (128, 32, 16)  # 4*sqrt(N) capped at N/39; D<=64 -> m=D


def test_bad_backend_and_shapes():
    with pytest.raises(ConfigError, match="unknown search backend"):
        S.search(DB, QUERIES, 1, "annoy")
    with pytest.raises(ConfigError, match="shapes"):
        S.search(DB, np.zeros((1, 3), dtype=np.float32), 1, "flat")
    with pytest.raises(ConfigError, match="does not divide"):
        S.ivfpq_settings(1000, 30, S.IVFPQParams(m=7))
    assert S.resolve_backend("auto", "cuda:0") == "torch" and S.resolve_backend("auto", "cpu") == "flat"
