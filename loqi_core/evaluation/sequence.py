"""Sequence matching (SeqSLAM: Milford & Wyeth, ICRA 2012) over the single-frame similarity of cached descriptors.

A robot's frames come in order, and so do the database's: a query is scored by the ``length`` frames ending at it
(the paper's d_s), matched along straight trajectories through the database. The steps, exactly (the tests check a
hand computation of each):

1. Difference matrix: D[t, i] = ‖q_t − d_i‖ = √(2 − 2·s[t, i]) for L2-normalised descriptors (s: inner product).
2. Contrast enhancement, every query row on its own: D̂[t, i] = (D[t, i] − μ) / σ, with μ and σ the mean and the
   population standard deviation of D[t, ·] over the database frames of i's traverse within ``window // 2`` of i
   (the paper's R_window; clipped at the traverse's ends; σ = 0 gives 0).
3. Velocity search: for the query frame T at position p of its traverse, the frames T − τ, τ < n = min(L, p + 1),
   meet the database frames j − round(rate·v·τ) (halves round up) for every velocity v from V_min to V_max in steps
   of V_step; ``rate`` is the nominal number of database frames per query frame. Steps that would leave j's
   traverse (before its first frame) are left out; S(j, v) is the sum of D̂ over the k steps kept divided by √k,
   and the score of database frame j is min over v of S(j, v): lower is better, ties go to the lower index.

Where every trajectory keeps all n steps, S ranks as SeqSLAM's sum does. Near the start of a database traverse
trajectories are cut short: the sum of k values of D̂ (each about zero-mean, unit-spread) divided by √k has the
same spread for every k, so a short trajectory is neither favoured (as a mean would be) nor buried (as a sum).

Only forward motion is searched (database and queries travel the same way). ``sequence_search`` does it for every
query of a test set; ``SequenceStream`` does it frame by frame for one stream (a server session), with the same
arithmetic on the same rows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from loqi_core.errors import ConfigError, DataError
from loqi_core.evaluation.search import recall_at_n

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.config import EvalConfig
    from loqi_core.data.sets import TestSet

CHUNK_VALUES = 1 << 20
"""Query rows × database images handled at once (float64: 8 MB per array), so memory stays bounded."""
SIMILARITY_CHUNK_BYTES = 1 << 22
"""Database rows converted to float64 at once while computing similarities (4 MB: they stay in the cache)."""

ORDERED_SETS = "nordland, demo, video360, or folder:ROOT?order=frame|timestamp|name"


@dataclass(frozen=True)
class SequenceParams:
    """SeqSLAM's parameters, named after the paper's (Milford & Wyeth 2012, Table I)."""

    length: int
    """d_s: query frames per sequence, the query and the frames before it (1 = contrast enhancement alone)."""
    window: int = 10
    """R_window: database frames of the local contrast-enhancement window (at least 2)."""
    v_min: float = 0.8
    """V_min: the slowest trajectory, in nominal database frames per query frame."""
    v_max: float = 1.2
    """V_max: the fastest trajectory."""
    v_step: float = 0.1
    """V_step: the step between the velocities searched."""

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ConfigError(f"sequence length must be at least 1, got {self.length}")
        if self.window < 2:
            raise ConfigError(f"sequence window must be at least 2 frames, got {self.window}")
        if not (0 < self.v_min <= self.v_max) or self.v_step <= 0:
            raise ConfigError(f"sequence velocities need 0 < v_min <= v_max and v_step > 0, got "
                              f"{self.v_min}, {self.v_max}, {self.v_step}")  # fmt: skip

    def velocities(self) -> np.ndarray:
        """V_min, V_min + V_step, ... up to V_max (inclusive)."""
        count = int(math.floor((self.v_max - self.v_min) / self.v_step + 1e-9)) + 1
        return np.round(self.v_min + self.v_step * np.arange(count), 9)

    def offsets(self, rate: float) -> np.ndarray:
        """Database offsets round(rate·v·τ) (V'×L, distinct rows only, each non-decreasing in τ)."""
        if not rate > 0:
            raise ConfigError(f"sequence rate (database frames per query frame) must be positive, got {rate}")
        steps = np.arange(self.length)
        table = np.floor(rate * self.velocities()[:, None] * steps[None, :] + 0.5 + 1e-9).astype(np.int64)
        return np.unique(table, axis=0)


@dataclass(frozen=True)
class Traverses:
    """An image list in capture order: ``order`` holds every image index, traverse after traverse, each in capture
    order; ``first``/``last`` give, for each entry of ``order``, the entries where its traverse begins and ends."""

    order: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def of(cls, sequences: Sequence[Sequence[int]], n: int) -> "Traverses":
        """From ``ImageList.sequences`` (runs of indices in capture order); an image in no run is a traverse alone."""
        runs = [list(s) for s in sequences if len(s)]
        seen = np.zeros(n, dtype=bool)
        for run in runs:
            idx = np.asarray(run, dtype=np.int64)
            if idx.min() < 0 or idx.max() >= n or seen[idx].any() or len(set(run)) < len(run):
                raise DataError(f"sequence order lists an image twice or outside the list of {n} images")
            seen[idx] = True
        runs += [[i] for i in np.flatnonzero(~seen).tolist()]
        order = np.concatenate([np.asarray(r, dtype=np.int64) for r in runs]) if runs else np.zeros(0, np.int64)
        lengths = np.array([len(r) for r in runs], dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        return cls(order, starts, starts + np.repeat(lengths, lengths) - 1)

    def __len__(self) -> int:
        return len(self.order)

    @property
    def count(self) -> int:
        """How many traverses."""
        return int(np.count_nonzero(self.first == np.arange(len(self))))

    @property
    def position(self) -> np.ndarray:
        """Each entry's place in its traverse (0 at the traverse's first frame)."""
        return np.arange(len(self)) - self.first


def traverses_of(test: "TestSet") -> tuple[Traverses, Traverses]:
    """The database's and the queries' traverses; a test set without capture order is refused in one line."""
    parts = (("database", test.database), ("queries", test.queries))
    missing = [part for part, images in parts if images.sequences is None]
    if missing:
        raise ConfigError(
            f'test set "{test.name}": its {" and ".join(missing)} have no capture order, and sequence matching '
            f"(--sequence, eval.sequence) needs ordered traverses: {ORDERED_SETS}"
        )
    database, queries = (Traverses.of(images.sequences or [], len(images)) for _, images in parts)
    return database, queries


# ---- the three steps -----------------------------------------------------------------------------


def similarity_matrix(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Step 0: inner products of query descriptors with every database descriptor (Q×N, database index order), in
    float64. The products of float32 descriptors are exact in float64 and the sums good to about 1e-16, so a frame
    pushed alone online gets the numbers it gets in a chunk of queries offline: float32 sums differ in the last bit
    between the two, and contrast enhancement amplifies that to about 1e-5 in the sequence scores."""
    q = np.asarray(queries, dtype=np.float64)
    out = np.empty((len(q), len(database)))
    step = max(1, SIMILARITY_CHUNK_BYTES // (8 * max(1, database.shape[1])))
    for d0 in range(0, len(database), step):
        out[:, d0 : d0 + step] = q @ np.asarray(database[d0 : d0 + step], dtype=np.float64).T
    return out


def difference(similarity: np.ndarray) -> np.ndarray:
    """Step 1: inner products of L2-normalised descriptors → their Euclidean distances (float64)."""
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(similarity, dtype=np.float64)))


def enhance_contrast(differences: np.ndarray, database: Traverses, window: int) -> np.ndarray:
    """Step 2: each row (columns in ``database.order``) normalised by the mean and standard deviation of its
    values within ``window // 2`` database frames on either side, inside the frame's traverse."""
    d = np.asarray(differences, dtype=np.float64)
    half = window // 2
    cols = np.arange(d.shape[1])
    lo = np.maximum(cols - half, database.first)
    hi = np.minimum(cols + half, database.last) + 1
    zero = np.zeros((len(d), 1))
    sums = np.concatenate([zero, np.cumsum(d, axis=1)], axis=1)
    squares = np.concatenate([zero, np.cumsum(d * d, axis=1)], axis=1)
    count = hi - lo
    mean = (sums[:, hi] - sums[:, lo]) / count
    var = np.maximum(0.0, (squares[:, hi] - squares[:, lo]) / count - mean * mean)
    std = np.sqrt(var)
    flat = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return np.where(flat, 0.0, (d - mean) / np.where(flat, 1.0, std))


def sequence_scores(enhanced: np.ndarray, ends: Sequence[int], database: Traverses, offsets: np.ndarray) -> np.ndarray:
    """Step 3: scores (len(ends) × database, columns in ``database.order``, lower is better) of the sequences
    ending at rows ``ends`` of ``enhanced`` (consecutive frames of one query traverse, oldest first), each over
    the rows end − τ for τ < min(L, end + 1), L = ``offsets.shape[1]``."""
    ends = np.asarray(ends, dtype=np.int64)
    n_db = enhanced.shape[1]
    steps = np.minimum(offsets.shape[1], ends + 1)
    position = database.position
    best = np.full((len(ends), n_db), np.inf)
    for offset in offsets:
        total = np.zeros((len(ends), n_db))
        for tau, o in enumerate(offset.tolist()):
            rows = np.flatnonzero(steps > tau)
            if not len(rows) or o >= n_db:
                continue
            inside = position[o:] >= o  # database frame j - o still in j's traverse
            total[rows, o:] += np.where(inside, enhanced[ends[rows] - tau, : n_db - o], 0.0)
        kept = np.minimum(steps[:, None], np.searchsorted(offset, position, side="right")[None, :])
        np.minimum(best, total / np.sqrt(kept), out=best)
    return best


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest scores of each row (database index order) and their indices, ties to the lower index;
    -1 and +inf where the database has fewer than ``k`` images."""
    n, keep = scores.shape[1], min(k, scores.shape[1])
    indices = np.full((len(scores), k), -1, dtype=np.int64)
    values = np.full((len(scores), k), np.inf)
    kth = np.partition(scores, keep - 1, axis=1)[:, keep - 1] if n else np.zeros(len(scores))
    for r, row in enumerate(scores):
        candidates = np.flatnonzero(row <= kth[r])
        chosen = candidates[np.argsort(row[candidates], kind="stable")[:keep]]
        indices[r, :keep], values[r, :keep] = chosen, row[chosen]
    return indices, values


# ---- a whole test set, and a stream --------------------------------------------------------------


def sequence_search(
    database: np.ndarray,
    queries: np.ndarray,
    database_traverses: Traverses,
    query_traverses: Traverses,
    params: SequenceParams,
    k: int,
    rate: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database indices (Q×k, best first) and sequence scores (lower is better) of every query.

    ``database``/``queries``: L2-normalised descriptors (memory maps are fine), rows in image-list order.
    ``rate``: nominal database frames per query frame; None = len(database) / len(queries).
    """
    offsets = params.offsets(len(database) / max(1, len(queries)) if rate is None else rate)
    indices = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), np.inf)
    chunk = max(1, CHUNK_VALUES // max(1, len(database)))
    for start, stop in _runs(query_traverses):
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            a0 = max(start, a - (params.length - 1))  # the frames before the chunk its first sequences reach back to
            rows = query_traverses.order[a0:b]
            ordered_similarity = similarity_matrix(queries[rows], database)[:, database_traverses.order]
            enhanced = enhance_contrast(difference(ordered_similarity), database_traverses, params.window)
            # row e of ``enhanced`` is the query at position e of its traverse when a0 == start, else e >= L - 1:
            # either way the sequence ending there has min(L, e + 1) frames, as sequence_scores counts them
            ordered = sequence_scores(enhanced, np.arange(a - a0, b - a0), database_traverses, offsets)
            indices[rows[a - a0 :]], scores[rows[a - a0 :]] = top_k(in_index_order(ordered, database_traverses), k)
    return indices, scores


def in_index_order(ordered: np.ndarray, database: Traverses) -> np.ndarray:
    """Columns in capture order (``database.order``) → columns in database index order."""
    out = np.empty_like(ordered)
    out[:, database.order] = ordered
    return out


class SequenceStream:
    """Sequence matching frame by frame for one stream (a server session): ``push`` each frame's similarity to
    the database and get the scores of the sequence ending at it, the numbers ``sequence_search`` gives offline
    for the same rows of similarity. Holds the last ``params.length`` enhanced rows (L × database floats)."""

    def __init__(self, database: Traverses, params: SequenceParams, rate: float = 1.0) -> None:
        self.database = database
        self.params = params
        self.offsets = params.offsets(rate)
        self.recent: deque[np.ndarray] = deque(maxlen=params.length)

    def push(self, similarity: np.ndarray) -> np.ndarray:
        """One frame's inner products with every database descriptor (database index order; ``similarity_matrix``
        of its descriptor, for the offline numbers) → the scores of the sequence ending at this frame (database
        index order, lower is better; rank them with ``top_k``)."""
        row = np.asarray(similarity, dtype=np.float64).reshape(1, -1)[:, self.database.order]
        self.recent.append(enhance_contrast(difference(row), self.database, self.params.window)[0])
        ordered = sequence_scores(np.stack(self.recent), [len(self.recent) - 1], self.database, self.offsets)
        return in_index_order(ordered, self.database)[0]

    def reset(self) -> None:
        """Forget the frames seen (a new traverse begins)."""
        self.recent.clear()


@dataclass(repr=False)
class SequenceResult:
    """Sequence matching of one evaluation, beside its single-frame search (``EvalResult.sequence``)."""

    params: SequenceParams
    rate: float
    """Nominal database frames per query frame (the velocities are multiples of it)."""
    recalls: dict[str, float]
    """Recall@N of the sequence rankings; {} on a label-free test set."""
    predictions: np.ndarray
    """Q×K database indices, best first (-1 where the database has fewer than K images)."""
    scores: np.ndarray
    """Q×K sequence scores, lower is better: Σ D̂ / √steps along each database image's best trajectory."""
    protocol: str
    seconds: float

    def settings(self) -> dict[str, Any]:
        """The parameters as metrics.json records them."""
        p = self.params
        return {"length": p.length, "window": p.window, "v_min": p.v_min, "v_max": p.v_max, "v_step": p.v_step,
                "rate": round(self.rate, 6)}  # fmt: skip


def params_of(config: "EvalConfig") -> SequenceParams:
    """SequenceParams from ``eval.sequence`` and ``eval.sequence_*``."""
    return SequenceParams(config.sequence, config.sequence_window, config.sequence_v_min, config.sequence_v_max,
                          config.sequence_v_step)  # fmt: skip


def match_sequences(
    test: "TestSet", database: np.ndarray, queries: np.ndarray, ground_truth: list[np.ndarray] | None,
    config: "EvalConfig",
) -> SequenceResult:  # fmt: skip
    """Sequence matching of a test set from its descriptors (no re-encoding), recall@N as the engine measures it."""
    start = time.perf_counter()
    db_traverses, query_traverses = traverses_of(test)
    params = params_of(config)
    rate = config.sequence_rate or len(database) / max(1, len(queries))
    k = max(max(config.recall), config.top_k)
    predictions, scores = sequence_search(database, queries, db_traverses, query_traverses, params, k, rate)
    recalls = recall_at_n(predictions, ground_truth, config.recall) if ground_truth is not None else {}
    protocol = (
        f"SeqSLAM over the {params.length} frame(s) ending at each query (d_s {params.length}, R_window "
        f"{params.window}, V {params.v_min:g} to {params.v_max:g} step {params.v_step:g}, times {rate:.4g} database "
        f"frames per query frame); capture order: {db_traverses.count} database and {query_traverses.count} query "
        "traverse(s)"
    )
    return SequenceResult(params, rate, recalls, predictions, scores, protocol, time.perf_counter() - start)


def _runs(traverses: Traverses) -> list[tuple[int, int]]:
    """(start, stop) entries of ``traverses.order`` for each traverse."""
    starts = np.flatnonzero(traverses.first == np.arange(len(traverses)))
    return list(zip(starts.tolist(), (traverses.last[starts] + 1).tolist()))
