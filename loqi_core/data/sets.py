"""What datasets hand the engines: image lists with positions and sequence order, test and train sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loqi_core.errors import DataError


@dataclass
class ImageList:
    """Image files with optional UTM positions (N×2 east/north, metres) and sequence order.

    ``sequences`` lists runs of indices in capture order (a video, a train ride); video degradations
    encode each run as one stream. None means the images have no order and are encoded one per stream.
    """

    paths: list[Path]
    positions: np.ndarray | None = None
    sequences: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        if self.positions is not None:
            self.positions = np.asarray(self.positions, dtype=np.float64).reshape(len(self.paths), 2)

    def __len__(self) -> int:
        return len(self.paths)

    def without(self, bad: set[Path]) -> tuple["ImageList", np.ndarray]:
        """This list less the files in ``bad``, and the kept indices (to remap anything indexed by image)."""
        keep = np.array([i for i, p in enumerate(self.paths) if p not in bad], dtype=np.int64)
        new_index = {int(old): new for new, old in enumerate(keep)}
        sequences = None
        if self.sequences is not None:
            sequences = [[new_index[i] for i in s if i in new_index] for s in self.sequences]
            sequences = [s for s in sequences if s]
        positions = self.positions[keep] if self.positions is not None else None
        return ImageList([self.paths[i] for i in keep], positions, sequences), keep


@dataclass
class TestSet:
    """A database and queries; ground truth from positions within a radius, or given per query."""

    name: str
    database: ImageList
    queries: ImageList
    positives: list[np.ndarray] | None = None
    """Explicit ground truth: for each query, the indices of its database positives."""
    notes: list[str] = field(default_factory=list)
    """Things a run should report: protocol mismatches, skipped files (a summary line each)."""
    skipped: list[str] = field(default_factory=list)
    """``"path: reason"`` for every file left out with ``skip_bad``; a run writes them to its directory."""
    database_groups: np.ndarray | None = None
    """Optional group label per database image (e.g. the view direction of a 360° video)."""
    query_groups: np.ndarray | None = None
    """With ``database_groups``: a positive must also share the query's group, not only be within the radius."""
    expected_counts: dict[str, int] | None = None
    """The published sizes of the split actually read ({} = none known); None: use the dataset's spec."""
    skip_bad: bool = False
    """Leave out (and list) an image that turns out unreadable only when the engine decodes it."""

    def drop(self, bad: set[Path], reasons: dict[Path, str]) -> None:
        """Leave the files in ``bad`` out of the database and queries (ground truth remapped) and list them."""
        self.database, kept_db = self.database.without(bad)
        self.queries, kept_q = self.queries.without(bad)
        if self.positives is not None:
            new_db = {int(old): new for new, old in enumerate(kept_db)}
            self.positives = [np.array([new_db[i] for i in np.asarray(self.positives[q]).tolist() if i in new_db],
                                       dtype=np.int64) for q in kept_q]  # fmt: skip
        if self.database_groups is not None:
            self.database_groups = self.database_groups[kept_db]
        if self.query_groups is not None:
            self.query_groups = self.query_groups[kept_q]
        self.skipped += [f"{p}: {reasons[p]}" for p in sorted(bad)]
        self.notes.append(f"left out {len(bad)} image(s) that could not be decoded or preprocessed (skip_bad); the list is written to the run directory")

    @property
    def labelled(self) -> bool:
        """Whether recall can be measured: explicit ground truth, or positions of the database AND the queries."""
        return self.positives is not None or (self.database.positions is not None and self.queries.positions is not None)

    def ground_truth(self, radius_m: float = 25.0) -> list[np.ndarray]:
        """Database indices within ``radius_m`` of each query (the VPR protocol), or the explicit list."""
        if self.positives is not None:
            return [np.asarray(p, dtype=np.int64) for p in self.positives]
        if self.database.positions is None or self.queries.positions is None:
            raise DataError(f'test set "{self.name}" has neither positions nor explicit ground truth')
        db = self.database.positions
        grouped = self.database_groups is not None and self.query_groups is not None
        out: list[np.ndarray] = []
        step = max(1, 4_000_000 // max(1, len(db)))  # bounded memory: ~4M distances per chunk
        for start in range(0, len(self.queries), step):
            chunk = self.queries.positions[start : start + step]
            dx = chunk[:, None, 0] - db[None, :, 0]
            dy = chunk[:, None, 1] - db[None, :, 1]
            close = dx * dx + dy * dy <= radius_m**2
            if grouped:
                close &= self.query_groups[start : start + step, None] == self.database_groups[None, :]  # type: ignore[index]
            out.extend(np.flatnonzero(row) for row in close)
        return out


@dataclass
class TrainSet:
    """Training images; ``place_ids`` groups images of one place (needed by the triplet loss only)."""

    name: str
    images: ImageList
    place_ids: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """``"path: reason"`` for every file left out with ``skip_bad``; a run writes them to its directory."""
    skip_bad: bool = False
    """Leave out (and list) an image that turns out unreadable only when training decodes it."""
    groups: np.ndarray | None = None
    """Optional group label per image (GSV-Cities: its city); mining (``distill.mine``) draws an anchor's negatives
    from its own group, as the paper's authors mined city by city. None: one group."""

    def places(self) -> dict[int, list[int]]:
        if self.place_ids is None:
            raise DataError(f'training set "{self.name}" has no places (a label-free folder); use ickd or mse')
        groups: dict[int, list[int]] = {}
        for i, pid in enumerate(self.place_ids.tolist()):
            groups.setdefault(int(pid), []).append(i)
        return groups


def skipped_path(name: str, run_dir: str | Path) -> Path:
    """``<run dir>/skipped_<dataset name>.txt``: where the files a dataset left out are listed."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "dataset"
    return Path(run_dir) / f"skipped_{safe}.txt"


def write_skipped(dataset: TestSet | TrainSet, run_dir: str | Path, filename: str | None = None) -> Path | None:
    """Write the files ``skip_bad`` left out (one ``path: reason`` per line) into the run directory.

    Returns the file written, or None when nothing was skipped. The default name is
    ``skipped_<dataset name>.txt`` so that several datasets of one run do not overwrite each other.
    """
    if not dataset.skipped:
        return None
    out = Path(run_dir) / filename if filename else skipped_path(dataset.name, run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(dataset.skipped) + "\n")
    return out
