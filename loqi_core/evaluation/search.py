"""Nearest-neighbour search of query descriptors in a database, and recall@N from the ranked lists.

All descriptors are L2-normalised, so ranking by inner product equals ranking by L2 distance (the reference
used ``faiss.IndexFlatL2``). Every path ranks by one score, ``exact_scores``: the inner product summed in float64
(each product of two float32 values is exact there) and rounded to float32, which does not depend on the backend,
the batch, the device or the order of summation of a BLAS kernel. The backends below only propose candidates;
the candidates are re-scored exactly and ordered by (score, lower database index), so the ranking, ties and
near-ties included, is the same for FAISS and torch, CPU and GPU, one query or many (and for ``loqi serve``).

Backends:
- ``flat``: FAISS exact inner-product search on the CPU, database streamed in chunks (works on memory maps).
- ``torch``: chunked matmul + top-k on any torch device (the GPU path).
- ``ivfpq``: FAISS IVF-PQ, approximate, for databases of millions (trained on a sample, added in chunks).
- ``auto``: ``torch`` on a CUDA device, else ``flat``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np

from loqi_core.errors import ConfigError, LoqiError

Backend = Literal["auto", "flat", "torch", "ivfpq"]

QUERY_CHUNK = 2048
DB_CHUNK_BYTES = 1 << 29
"""Database rows are read in chunks of about this many bytes (float32), so a memory map never loads whole."""
EXACT_SLACK = 8
"""Candidates beyond k that an exact search re-scores, so that a near-tie at rank k is rarely left unsettled."""
EXACT_CHUNK_BYTES = 1 << 26
"""Float64 products held at once while re-scoring candidates exactly."""


def _db_chunk(dim: int) -> int:
    return max(1024, DB_CHUNK_BYTES // (4 * max(1, dim)))


@dataclass
class IVFPQParams:
    """IVF-PQ settings; None picks a value from the database size and dimension."""

    nlist: int | None = None
    """Coarse cells; default ≈ 4·√N (at least 1, at most N/39 so each cell has training points)."""
    m: int | None = None
    """PQ sub-quantisers; must divide the dimension; default the largest divisor of D that is ≤ 64."""
    nbits: int = 8
    nprobe: int | None = None
    """Cells visited per query; default min(nlist, max(16, nlist // 16))."""
    train_size: int = 100_000
    refine: int = 10
    """Re-rank the IVF-PQ top ``refine``·k with exact scores read from the (memory-mapped) database; 0 = off."""


def resolve_backend(backend: str, device: str | None) -> str:
    """``auto`` → ``torch`` on CUDA, ``flat`` otherwise; anything unknown is a ConfigError."""
    if backend == "auto":
        return "torch" if device is not None and str(device).startswith("cuda") else "flat"
    if backend not in ("flat", "torch", "ivfpq"):
        raise ConfigError(f'eval.index: unknown search backend "{backend}" (auto, flat, torch, ivfpq)')
    return backend


def search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    backend: Backend | str = "auto",
    *,
    device: str | None = None,
    ivfpq: IVFPQParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database indices (Q×k int64, best first) and their inner-product scores (Q×k float32).

    ``database`` may be a read-only memory map; it is read in chunks. When the database has fewer than ``k``
    entries, the missing ranks are -1 with score -inf.
    """
    backend = resolve_backend(backend, device)
    k = int(k)
    if k < 1:
        raise ConfigError("search: k must be at least 1")
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ConfigError(f"search: descriptor shapes do not match: database {database.shape}, queries {queries.shape}")
    check_finite(database, "database")
    check_finite(queries, "queries")
    if backend == "ivfpq":
        return _search_ivfpq(database, queries, k, ivfpq or IVFPQParams())
    topk = _faiss_topk if backend == "flat" else _torch_topk(device or "cpu")
    return _exact(database, queries, k, topk)


class NonFiniteDescriptorsError(LoqiError):
    """Descriptors holding NaN or Inf: any ranking of them would be meaningless, so nothing is searched."""


def check_finite(descriptors: np.ndarray, what: str) -> None:
    """Raise NonFiniteDescriptorsError naming how many rows of ``descriptors`` are not finite (read in chunks)."""
    bad, first = 0, None
    step = _db_chunk(descriptors.shape[1] if descriptors.ndim == 2 else 1)
    for d0 in range(0, len(descriptors), step):
        rows = ~np.isfinite(np.asarray(descriptors[d0 : d0 + step])).reshape(len(descriptors[d0 : d0 + step]), -1).all(1)
        if rows.any() and first is None:
            first = d0 + int(np.argmax(rows))
        bad += int(rows.sum())
    if bad:
        raise NonFiniteDescriptorsError(
            f"{what} descriptors: {bad} of {len(descriptors)} hold NaN or Inf (first: row {first}); nothing was searched. "
            "The model's weights or inputs are not finite (a diverged checkpoint?)"
        )


# ---- exact search --------------------------------------------------------------------------------


def _order(scores: np.ndarray, ids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (score descending, index ascending) and keep ``keep`` columns; -1 ids sort last."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, -scores.astype(np.float64)), axis=-1)[:, :keep]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _exact(database: np.ndarray, queries: np.ndarray, k: int, topk) -> tuple[np.ndarray, np.ndarray]:
    """Exact search, database streamed in chunks: the backend's top k + EXACT_SLACK candidates, settled exactly."""
    n, nq = len(database), len(queries)
    want = k + EXACT_SLACK
    q = np.require(queries, dtype=np.float32, requirements=["C", "W"])
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.full((nq, 0), -1, dtype=np.int64)
    step = _db_chunk(database.shape[1])
    for d0 in range(0, n, step):
        chunk = np.require(database[d0 : d0 + step], dtype=np.float32, requirements=["C", "W"])
        s, i = topk(q, chunk, min(want, len(chunk)))
        best_s, best_i = _order(np.concatenate([best_s, s], 1), np.concatenate([best_i, i + d0], 1), want)
    return settle(database, q, best_i, best_s, k, lambda row: _all_scores(database, q[row], topk))


def search_flat_index(index, database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``search(database, queries, k, "flat")`` through a FAISS flat inner-product index already built over
    ``database`` (``loqi serve`` keeps one in memory): the same candidates' rule, the same exact scores and order."""
    q = np.require(queries, dtype=np.float32, requirements=["C", "W"])
    s, i = index.search(q, min(len(database), k + EXACT_SLACK))
    return settle(database, q, i.astype(np.int64), s, k, lambda row: _all_scores(database, q[row], _faiss_topk))


def exact_scores(database: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """loqi's one score: each query's inner product with each of its candidates (Q×C database indices, -1 for
    none: -inf), summed in float64 and rounded to float32. A product of two float32 values is exact in float64, so
    the score does not depend on how a backend orders its sums: the same pair always gets the same float32."""
    width, dim = candidates.shape[1], database.shape[1]
    out = np.full(candidates.shape, -np.inf, dtype=np.float32)
    step = max(1, EXACT_CHUNK_BYTES // (8 * max(1, width) * dim))
    for q0 in range(0, len(queries), step):
        cand = candidates[q0 : q0 + step]
        ids = np.unique(cand[cand >= 0])
        if not len(ids):
            continue
        rows = np.asarray(database[ids], dtype=np.float64)  # sorted reads: sequential-ish on a memory map
        pos = np.searchsorted(ids, np.where(cand >= 0, cand, ids[0]))
        q64 = np.asarray(queries[q0 : q0 + step], dtype=np.float64)
        scores = (q64[:, None, :] * rows[pos]).sum(-1)  # pairwise summation of each row: fixed order, any batch
        out[q0 : q0 + step] = np.where(cand >= 0, scores, -np.inf).astype(np.float32)
    return out


def approximation_bound(dim: int, query: np.ndarray) -> float:
    """How far a float32 inner product of ``query`` with a database vector (FAISS, BLAS or torch, any order of
    summation) can be from the exact one: at most D·2⁻²⁴·‖q‖·‖x‖ (to first order), taken twice over for
    L2-normalised descriptors, ‖x‖ ≤ 2 allowed."""
    return 4.0 * dim * 2.0**-24 * max(1.0, float(np.linalg.norm(query)))


def settle(
    database: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    approximate: np.ndarray,
    k: int,
    all_scores,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` (indices, scores) from a backend's candidates (Q×C, best first by its own float32
    ``approximate`` scores, -1 for none): re-scored by ``exact_scores`` and ordered by (score, lower index).

    A query is settled when no image outside its candidates can reach its k-th exact score, i.e. the weakest
    candidate's approximate score plus ``approximation_bound`` stays below it. Otherwise (a near-tie at the
    boundary, rare) ``all_scores(row)`` gives the approximate scores of every database image, and every image
    within the bound of the k-th exact score is re-scored too."""
    n = len(database)
    exact = exact_scores(database, queries, candidates)
    s, i = _order(exact, candidates, candidates.shape[1])
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    m = min(k, s.shape[1])
    out_s[:, :m], out_i[:, :m] = s[:, :m], i[:, :m]
    held = (candidates >= 0).sum(1)
    weakest = np.where(held > 0, approximate[np.arange(len(queries)), np.maximum(held - 1, 0)], np.inf)
    for row in range(len(queries)):
        if held[row] >= n:
            continue  # every database image is a candidate
        bound = approximation_bound(database.shape[1], queries[row])
        if weakest[row] + bound < out_s[row, k - 1]:
            continue
        approx = all_scores(row)
        reach = np.flatnonzero(approx + bound >= out_s[row, k - 1])
        ids = np.union1d(reach, candidates[row][candidates[row] >= 0])[None]
        rs, ri = _order(exact_scores(database, queries[row : row + 1], ids), ids, k)
        out_s[row, : rs.shape[1]], out_i[row, : ri.shape[1]] = rs[0], ri[0]
    return out_i, out_s


def _all_scores(database: np.ndarray, query: np.ndarray, topk) -> np.ndarray:
    """The backend's (approximate) scores of one query against every database image, in database order."""
    scores = []
    step = _db_chunk(database.shape[1])
    for d0 in range(0, len(database), step):
        chunk = np.require(database[d0 : d0 + step], dtype=np.float32, requirements=["C", "W"])
        scores.append(topk(query[None], chunk, len(chunk), all_scores=True)[0][0])
    return np.concatenate(scores)


def _faiss_topk(q: np.ndarray, db: np.ndarray, k: int, all_scores: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """FAISS flat inner product of all queries against one database chunk."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    if all_scores:
        k = len(db)
    s, i = index.search(q, k)
    if all_scores:  # back into database order
        out = np.empty_like(s)
        np.put_along_axis(out, i, s, 1)
        return out, np.arange(len(db))[None]
    return s, i.astype(np.int64)


def _torch_topk(device: str):
    """Matmul + top-k on ``device``; the database chunk moves once, queries stream through in chunks."""
    import torch

    dev = torch.device(device)

    def topk(q: np.ndarray, db: np.ndarray, k: int, all_scores: bool = False) -> tuple[np.ndarray, np.ndarray]:
        dbt = torch.from_numpy(db).to(dev)
        out_s, out_i = [], []
        for q0 in range(0, len(q), QUERY_CHUNK):
            with _no_tf32():  # float32 products, within approximation_bound of the exact score
                scores = torch.from_numpy(q[q0 : q0 + QUERY_CHUNK]).to(dev) @ dbt.T
            if all_scores:
                return scores.float().cpu().numpy(), np.arange(len(db))[None]
            s, i = torch.topk(scores, k, dim=1, largest=True, sorted=True)
            out_s.append(s.float().cpu().numpy())
            out_i.append(i.cpu().numpy().astype(np.int64))
        return np.concatenate(out_s), np.concatenate(out_i)

    return topk


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """CUDA matmuls in full float32 (a training run may have turned TF32 on for its own matmuls)."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---- IVF-PQ --------------------------------------------------------------------------------------


def ivfpq_settings(n: int, dim: int, params: IVFPQParams) -> tuple[int, int, int]:
    """(nlist, m, nprobe) for a database of ``n`` vectors of dimension ``dim``."""
    nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = params.m or max(d for d in range(1, min(64, dim) + 1) if dim % d == 0)
    if dim % m:
        raise ConfigError(f"eval.ivf_m: {m} does not divide the descriptor dimension {dim}")
    nprobe = params.nprobe or min(nlist, max(16, nlist // 16))
    return nlist, m, nprobe


def build_ivfpq(database: np.ndarray, params: IVFPQParams, seed: int = 0):
    """Train an inner-product IVF-PQ index on a sample of the database and add it chunk by chunk."""
    import faiss

    n, dim = database.shape
    nlist, m, nprobe = ivfpq_settings(n, dim, params)
    quantizer = faiss.IndexFlatIP(dim)
    nbits = params.nbits if n >= 2**params.nbits * 4 else max(1, int(math.log2(max(2, n // 4))))
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, params.train_size), replace=False))
    index.train(np.ascontiguousarray(database[sample], dtype=np.float32))
    step = _db_chunk(dim)
    for d0 in range(0, n, step):
        index.add(np.ascontiguousarray(database[d0 : d0 + step], dtype=np.float32))
    index.nprobe = nprobe
    return index


def _search_ivfpq(database: np.ndarray, queries: np.ndarray, k: int, params: IVFPQParams) -> tuple[np.ndarray, np.ndarray]:
    index = build_ivfpq(database, params)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    wide = min(len(database), k * params.refine) if params.refine else k
    s, i = index.search(q, max(k, wide))
    s = np.where(i < 0, -np.inf, s).astype(np.float32)
    i = i.astype(np.int64)
    if params.refine:
        s, i = refine(database, q, i, k)
    return i[:, :k], s[:, :k]


def refine(database: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's candidates re-scored by ``exact_scores`` (read from the database, a memory map is fine) and
    ordered by (score, lower index), the best ``k`` kept: the scores and ties of an exact search."""
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    s, i = _order(exact_scores(database, queries, candidates), candidates, k)
    out_s[:, : s.shape[1]], out_i[:, : i.shape[1]] = s, i
    return out_s, out_i


# ---- recall --------------------------------------------------------------------------------------


def first_hit_ranks(predictions: np.ndarray, ground_truth: Sequence[np.ndarray]) -> np.ndarray:
    """For each query, the 0-based rank of its first true positive among ``predictions``, or -1 for none."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction rows but {len(ground_truth)} ground-truth entries")
    ranks = np.full(len(predictions), -1, dtype=np.int64)
    for q, (row, positives) in enumerate(zip(predictions, ground_truth)):
        if len(positives) == 0:
            continue
        hits = np.flatnonzero(np.isin(row, positives))
        if len(hits):
            ranks[q] = hits[0]
    return ranks


def recall_at_n(predictions: np.ndarray, ground_truth: Sequence[np.ndarray], ns: Sequence[int]) -> dict[str, float]:
    """``{"R@1": 57.8, ...}``: percent of all queries with a positive in the top N (no positive = a miss)."""
    if max(ns) > predictions.shape[1]:
        raise ValueError(f"recall@{max(ns)} needs at least {max(ns)} predictions per query, got {predictions.shape[1]}")
    ranks = first_hit_ranks(predictions, ground_truth)
    total = max(1, len(ranks))
    return {f"R@{n}": 100.0 * float(((ranks >= 0) & (ranks < n)).sum()) / total for n in ns}
