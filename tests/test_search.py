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


def _near_ties(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """200 database vectors in 40 clusters of 5 near-copies (scores within an ulp or two of each other), and
    queries near the clusters: rank k cuts through near-ties again and again."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.normal(size=(40, 96)))
    db = _unit(np.repeat(base, 5, 0) + 3e-7 * rng.normal(size=(200, 96)))
    q = _unit(base[rng.integers(0, 40, 60)] + 0.3 * rng.normal(size=(60, 96)))
    return db, q


def _reference(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's float64 inner product rounded to float32, ordered by (score, lower index): by hand."""
    scores = np.array([[np.float32(sum(float(a) * float(b) for a, b in zip(qq, x))) for x in db] for qq in q])
    order = np.lexsort((np.broadcast_to(np.arange(len(db)), scores.shape), -scores.astype(np.float64)), axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, 1)


def test_near_ties_rank_alike_in_every_backend_batch_and_refine(monkeypatch):
    """The score is one function of the pair (float64 sum, rounded to float32), whatever proposed the candidates:
    FAISS or torch, all queries at once or one by one, a chunked database, or refine() of the IVF-PQ path."""
    db, q = _near_ties()
    want_i, want_s = _reference(db, q, 7)
    ties = sum(len(set(row)) < len(row) for row in want_s.tolist())
    assert ties > 10, "the data must hold ties at float32 precision"
    monkeypatch.setattr(S, "DB_CHUNK_BYTES", 64 * 96 * 4)  # database chunks of 64 rows
    for backend in BACKENDS:
        got_i, got_s = S.search(db, q, 7, backend)
        np.testing.assert_array_equal(got_i, want_i, err_msg=backend)
        np.testing.assert_array_equal(got_s, want_s, err_msg=backend)
        one_by_one = np.concatenate([S.search(db, q[j : j + 1], 7, backend)[0] for j in range(len(q))])
        np.testing.assert_array_equal(one_by_one, want_i, err_msg=backend)
    every = np.broadcast_to(np.arange(len(db))[::-1], (len(q), len(db))).copy()  # all candidates, in reverse order
    got_s, got_i = S.refine(db, q, every, 7)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)


def test_a_tie_beyond_the_candidates_is_settled_from_every_score(monkeypatch):
    """Twenty copies of the query: more tied images than candidates (k + EXACT_SLACK), so the candidates cannot
    settle rank k; every score of the row is looked at, and the lowest indices win."""
    rng = np.random.default_rng(5)
    x = _unit(rng.normal(size=(1, 32)))
    db = np.concatenate([_unit(rng.normal(size=(30, 32))), np.repeat(x, 20, 0)])
    rows = []
    real = S._all_scores
    monkeypatch.setattr(S, "_all_scores", lambda *a: rows.append(1) or real(*a))
    for backend in BACKENDS:
        idx, scores = S.search(db, x, 3, backend)
        assert idx[0].tolist() == [30, 31, 32] and len(set(scores[0].tolist())) == 1
    assert len(rows) == 2
