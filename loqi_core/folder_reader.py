"""Reading the ``folder`` dataset from disk; every bad file is named (or, with skip_bad, listed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loqi_core.data import IMAGE_SUFFIXES, ImageList, TestSet, TrainSet
from loqi_core.errors import DataError


def parse_utm(path: Path) -> tuple[float, float]:
    """``@east@north@...`` → (east, north); a name without valid coordinates is a DataError naming the file."""
    fields = path.name.split("@")
    try:
        return float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise DataError(f"{path}: file name has no UTM coordinates (expected @east@north@...@.jpg)") from None


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images (.jpg, .png, ...) in {folder}")
    return files


def _positioned(folder: Path, skip_bad: bool, bad: list[str]) -> ImageList:
    paths, positions = [], []
    for path in list_images(folder):
        try:
            positions.append(parse_utm(path))
            paths.append(path)
        except DataError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
    if not paths:
        raise DataError(f"no usable images in {folder}")
    return ImageList(paths, np.array(positions))


def test_folders(root: Path, split: str) -> tuple[Path, Path]:
    for base in (root / "images" / split, root):
        if (base / "database").is_dir() and (base / "queries").is_dir():
            return base / "database", base / "queries"
    raise DataError(f"{root}: expected images/{split}/database and images/{split}/queries (or database/ and queries/)")


def read_test_folder(params) -> TestSet:
    if params.root is None:
        raise DataError("the folder dataset needs a path: --dataset folder:PATH")
    root = Path(params.root)
    db_dir, q_dir = test_folders(root, params.split)
    bad: list[str] = []
    test = TestSet(root.name or "folder", _positioned(db_dir, params.skip_bad, bad), _positioned(q_dir, params.skip_bad, bad))
    test.notes.extend(bad)
    return test


def read_train_folder(params) -> TrainSet:
    """Images with ``@east@north@`` names are grouped into places; otherwise the set is label-free."""
    if params.root is None:
        raise DataError("the folder dataset needs a path: --train folder:PATH")
    paths = list_images(Path(params.root))
    try:
        positions = np.array([parse_utm(p) for p in paths])
    except DataError:
        return TrainSet(Path(params.root).name, ImageList(paths))
    return TrainSet(Path(params.root).name, ImageList(paths, positions), group_places(positions, params.place_radius_m))


def group_places(positions: np.ndarray, radius_m: float) -> np.ndarray:
    """Greedy clustering: each unassigned image starts a place that takes every unassigned image within radius."""
    ids = np.full(len(positions), -1, dtype=np.int64)
    next_id = 0
    for i in range(len(positions)):
        if ids[i] >= 0:
            continue
        near = (((positions - positions[i]) ** 2).sum(1) <= radius_m**2) & (ids < 0)
        ids[near] = next_id
        next_id += 1
    return ids
