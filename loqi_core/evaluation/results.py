"""What an evaluation returns: one model on one test set under one protocol. The engine fills it; reports,
grids and outputs read it (without importing the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.degrade.base import Degradation
    from loqi_core.evaluation.sequence import SequenceResult


@dataclass(repr=False)
class EvalResult:
    """One model on one test set under one protocol."""

    dataset: str
    recalls: dict[str, float]
    predictions: np.ndarray
    """Q×K database indices, best first (-1 where the database has fewer than K images)."""
    scores: np.ndarray
    ground_truth: list[np.ndarray] | None
    """Each query's database positives; None on a label-free test set (no positions: no recall)."""
    protocol: dict[str, Any]
    database_paths: list[Path]
    query_paths: list[Path]
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    degradation: Degradation | None = None
    """What the queries went through (the grids show each query as the model saw it)."""
    database_positions: np.ndarray | None = None
    """UTM east/north of the database images (N×2 metres), when the dataset has them: distances in the grids."""
    query_positions: np.ndarray | None = None
    """UTM east/north of the queries (Q×2 metres), when the dataset has them."""
    database_descriptors: np.ndarray | None = None
    """N×D float32 L2-normalised, rows in ``database_paths`` order (a read-only memory map)."""
    query_descriptors: np.ndarray | None = None
    sequence: SequenceResult | None = None
    """With ``eval.sequence``: sequence matching (SeqSLAM) from the same descriptors, beside the single-frame search."""

    @property
    def queries_without_positives(self) -> int | None:
        return None if self.ground_truth is None else sum(1 for g in self.ground_truth if len(g) == 0)

    def __repr__(self) -> str:  # a notebook shows this: the numbers, not 10 000 paths
        recalls = ", ".join(f"{k} {v:.2f}" for k, v in self.recalls.items())
        return (f"EvalResult({self.dataset}: {recalls}; {len(self.query_paths)} queries, {len(self.database_paths)} "
                f"database images, degradation {self.protocol.get('degradation')}, weights {self.protocol.get('weights')})")
