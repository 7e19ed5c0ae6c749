"""What datasets hand the engines: image lists with positions and sequence order, test and train sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loqi_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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

    def places(self) -> dict[int, list[int]]:
        if self.place_ids is None:
            raise DataError(f'training set "{self.name}" has no places (a label-free folder); use ickd or mse')
        groups: dict[int, list[int]] = {}
        for i, pid in enumerate(self.place_ids.tolist()):
            groups.setdefault(int(pid), []).append(i)
        return groups


def write_skipped(dataset: TestSet | TrainSet, run_dir: str | Path, filename: str | None = None) -> Path | None:
    """Write the files ``skip_bad`` left out (one ``path: reason`` per line) into the run directory.

    Returns the file written, or None when nothing was skipped. The default name is
    ``skipped_<dataset name>.txt`` so that several datasets of one run do not overwrite each other.
    """
    if not dataset.skipped:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name) or "dataset"
    out = Path(run_dir) / (filename or f"skipped_{safe}.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(dataset.skipped) + "\n")
    return out


def read_image(path: str | Path) -> "torch.Tensor":
    """Decode an image file to a uint8 RGB tensor 3×H×W; a missing, corrupt or truncated file names itself."""
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.load()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc} (corrupt or truncated?)") from None
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
