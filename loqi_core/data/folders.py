"""Reading image folders from disk; every bad file is named (or, with ``skip_bad``, left out and listed).

Validation is staged so that a 100k-image database loads in seconds: at load time each file gets a cheap
check (non-empty, a known image signature, and for JPEG/PNG the end marker that a truncated file lacks --
only a file without it is decoded, since phones append data after valid images; other formats have their
header parsed). ``validate="full"`` decodes every image up front instead, and
``"none"`` skips the checks. A file that passes the quick check but still fails to decode is reported by
:func:`loqi_core.data.images.read_image` with its path when the engine reads it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from loqi_core.data.images import IMAGE_SUFFIXES, read_image
from loqi_core.data.sets import ImageList, TestSet, TrainSet
from loqi_core.errors import DataError

Validate = Literal["quick", "full", "none"]
Order = Literal["none", "name", "frame", "timestamp"]
Labels = Literal["auto", "positions", "none"]

FRAME_FIELD = 7
"""gmberton's ``pano_id`` field, where the downloader's Nordland (and loqi's video360) put the frame index."""
TIMESTAMP_FIELD = 13
SKIP_HINT = "(with skip_bad, such files are left out and listed in the run directory)"

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


# ---- file names --------------------------------------------------------------------------------------
def name_field(path: Path, index: int) -> str:
    """Field ``index`` of an ``@``-separated file name ('' when the name has fewer fields)."""
    fields = Path(path).name.split("@")
    return fields[index] if index < len(fields) else ""


def parse_utm(path: Path) -> tuple[float, float]:
    """``@east@north@...`` → (east, north); a name without valid coordinates is a DataError naming the file."""
    fields = Path(path).name.split("@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise DataError(f"{path}: file name has no UTM coordinates (expected @east@north@...@.jpg)") from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise DataError(f"{path}: file name has non-finite UTM coordinates ({fields[1]!r}, {fields[2]!r})")
    return east, north


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


# ---- listing and validation --------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), sorted; a missing or empty folder is an error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def quick_check(path: Path) -> str | None:
    """Why ``path`` is not a readable, complete image, found without decoding it; None when it looks fine."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    # No end marker near the end: truncated, or a valid file with data appended after the image (phones add
    # trailers and motion-photo videos). Only such files are decoded to tell which.
    if head.startswith(_JPEG) and b"\xff\xd9" not in tail:
        reason = full_check(path)
        return None if reason is None else f"truncated JPEG (no end-of-image marker; decoding fails: {reason})"
    if head.startswith(_PNG) and b"IEND" not in tail[-64:]:
        reason = full_check(path)
        return None if reason is None else f"truncated PNG (no IEND chunk; decoding fails: {reason})"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # parsing the header catches garbled headers and decompression bombs
            img.size  # noqa: B018
    except Image.DecompressionBombError as exc:
        return f"decompression bomb ({exc})"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not an image PIL can read ({exc})"
    return None


def full_check(path: Path) -> str | None:
    """Decode the whole image; the reason it fails, or None."""
    try:
        read_image(path)
    except DataError as exc:
        return str(exc).removeprefix(f"cannot read image {path}: ")
    return None


def drop_unreadable(test: TestSet) -> int:
    """Decode every image of ``test`` and leave out (and list) those that fail; returns how many were dropped.
    The engine calls it once when an image that passed the quick check fails to decode under ``skip_bad``."""
    reasons = {}
    for path in _progress([*test.database.paths, *test.queries.paths], "decoding images (skip_bad)", True):
        reason = full_check(path)
        if reason is not None:
            reasons[path] = reason
    if reasons:
        test.drop(set(reasons), reasons)
    return len(reasons)


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from loqi_core.util.progress import progress

    return progress(items, desc=desc, unit="img", leave=False, mininterval=1.0)


def validate_files(paths: list[Path], mode: Validate, skip_bad: bool, skipped: list[str]) -> list[Path]:
    """Drop (with skip_bad) or raise on files that are not complete images; ``mode`` picks the check."""
    if mode == "none":
        return paths
    check = quick_check if mode == "quick" else full_check
    good = []
    desc = "checking images" if mode == "quick" else "decoding images"
    for path in _progress(paths, desc, len(paths) > 2000 or (mode == "full" and len(paths) > 200)):
        reason = check(path)
        if reason is None:
            good.append(path)
        elif skip_bad:
            skipped.append(f"{path}: {reason}")
        else:
            raise DataError(f"{path}: {reason} {SKIP_HINT}")
    return good


# ---- image lists -------------------------------------------------------------------------------------
def sequences_for(paths: list[Path], order: Order) -> list[list[int]] | None:
    """Runs of indices in capture order: one run per directory, ordered by name, frame index or timestamp."""
    if order == "none":
        return None
    runs: dict[Path, list[int]] = {}
    for i, path in enumerate(paths):
        runs.setdefault(path.parent, []).append(i)

    def key(i: int):
        path = paths[i]
        if order == "name":
            return _natural_key(path.name)
        value = name_field(path, FRAME_FIELD if order == "frame" else TIMESTAMP_FIELD)
        if order == "frame":
            try:
                return int(value)
            except ValueError:
                raise DataError(f"{path}: no frame index in field {FRAME_FIELD} of the name (order='frame')") from None
        if not value:
            raise DataError(f"{path}: no timestamp in field {TIMESTAMP_FIELD} of the name (order='timestamp')")
        return value

    return [sorted(run, key=key) for _, run in sorted(runs.items())]


def read_image_list(
    folder: Path,
    *,
    positions: bool | None = True,
    skip_bad: bool = False,
    validate: Validate = "quick",
    order: Order = "none",
    skipped: list[str] | None = None,
) -> ImageList:
    """The images under ``folder``; with ``positions`` each name must carry ``@east@north@``; None: positions when
    the names carry them (see ``names_have_positions``)."""
    skipped = skipped if skipped is not None else []
    paths, coords = [], []
    files = list_images(folder)
    if positions is None:
        positions = names_have_positions(files, folder, skip_bad)
    for path in files:
        if positions:
            try:
                coords.append(parse_utm(path))
            except DataError as exc:
                if not skip_bad:
                    raise DataError(f"{exc} {SKIP_HINT}") from None
                skipped.append(f"{path}: file name has no UTM coordinates")
                continue
        paths.append(path)
    keep = set(validate_files(paths, validate, skip_bad, skipped))
    if positions:
        coords = [c for p, c in zip(paths, coords) if p in keep]
    paths = [p for p in paths if p in keep]
    if not paths:
        raise DataError(f"no usable images in {folder} ({len(skipped)} skipped as bad)")
    return ImageList(paths, np.array(coords, dtype=np.float64) if positions else None, sequences_for(paths, order))


def _note_skipped(notes: list[str], skipped: list[str], where: Path) -> None:
    if skipped:
        notes.append(f"skipped {len(skipped)} bad file(s) under {where}; the list is written to the run directory")


# ---- test sets ---------------------------------------------------------------------------------------
def split_folders(root: Path, split: str = "test") -> tuple[Path, Path]:
    """``ROOT/images/<split>/{database,queries}`` (gmberton's layout) or ``ROOT/{database,queries}``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    for base in (root / "images" / split, root):
        if (base / "database").is_dir() and (base / "queries").is_dir():
            return base / "database", base / "queries"
    raise DataError(f"{root}: expected images/{split}/database and images/{split}/queries (or database/ and queries/)")


def read_test_folder(
    root: Path | None,
    *,
    name: str | None = None,
    split: str = "test",
    labels: Labels = "positions",
    skip_bad: bool = False,
    validate: Validate = "quick",
    order: Order = "none",
    expected: dict[str, int] | None = None,
    shuffle_seed: int | None = None,
) -> TestSet:
    """A gmberton-layout test set; ``expected`` are the published counts of this split, checked by the caller;
    ``shuffle_seed``: database and queries in that seed's random order (``shuffled``)."""
    if root is None:
        which = f'dataset "{name}"' if name else "this dataset"
        raise DataError(f"{which} needs a path: give it as NAME:PATH, or set --data-root / $LOQI_DATA")
    root = Path(root)
    db_dir, q_dir = split_folders(root, split)
    test = read_folder_pair(db_dir, q_dir, name=name or root.name or "folder", labels=labels, skip_bad=skip_bad,
                            validate=validate, order=order)  # fmt: skip
    test.expected_counts = expected
    return test if shuffle_seed is None else shuffled(test, shuffle_seed)


def _permuted(images: ImageList, order: np.ndarray) -> ImageList:
    new_index = {int(old): new for new, old in enumerate(order)}
    sequences = None if images.sequences is None else [[new_index[i] for i in s] for s in images.sequences]
    positions = None if images.positions is None else images.positions[order]
    return ImageList([images.paths[i] for i in order], positions, sequences)


def shuffled(test: TestSet, seed: int) -> TestSet:
    """``test`` with its database and queries each in a seeded random order (ground truth and groups follow): the
    images that share an extraction batch change, the recall of a batch-independent model does not."""
    rng = np.random.default_rng([seed, 1])
    db_order, q_order = rng.permutation(len(test.database)), rng.permutation(len(test.queries))
    test.database, test.queries = _permuted(test.database, db_order), _permuted(test.queries, q_order)
    if test.positives is not None:
        db_new = np.argsort(db_order)
        test.positives = [db_new[np.asarray(test.positives[q], dtype=np.int64)] for q in q_order]
    if test.database_groups is not None:
        test.database_groups = test.database_groups[db_order]
    if test.query_groups is not None:
        test.query_groups = test.query_groups[q_order]
    test.notes.append(f"database and queries in the random order of seed {seed} (shuffle_seed)")
    return test


def read_folder_pair(
    database: Path,
    queries: Path,
    *,
    name: str | None = None,
    labels: Labels = "auto",
    skip_bad: bool = False,
    validate: Validate = "quick",
    order: Order = "none",
) -> TestSet:
    """A test set from a database folder and a query folder (gmberton's evaluator takes them so).

    ``labels="auto"``: each folder gives positions when its names carry ``@east@north@``, none when no name does
    (label-free: predictions and pairs, no recall); ``"positions"`` requires them, ``"none"`` ignores them."""
    skipped: list[str] = []
    kw = dict(skip_bad=skip_bad, validate=validate, order=order, skipped=skipped)
    positions = {"auto": None, "positions": True, "none": False}[labels]
    lists = [read_image_list(Path(folder), positions=positions, **kw) for folder in (database, queries)]  # type: ignore[arg-type]
    test = TestSet(name or pair_name(Path(database), Path(queries)), *lists)
    test.skipped = skipped
    test.skip_bad = skip_bad
    _note_skipped(test.notes, skipped, Path(database).parent)
    return test


def pair_name(database: Path, queries: Path) -> str:
    """The name of a database/queries pair: their common folder, above gmberton's ``images/<split>/`` if there."""
    common = Path(os.path.commonpath([os.path.abspath(database), os.path.abspath(queries)]))
    if common.parent.name == "images" and common.parent.parent.name:
        common = common.parent.parent
    return common.name or "folder"


def names_have_positions(paths: list[Path], folder: Path, skip_bad: bool) -> bool:
    """True when the names carry ``@east@north@``, False when none does; a folder where only some do is an error
    naming the first file without (with ``skip_bad`` such files are left out instead)."""
    has = [_has_utm(p) for p in paths]
    if any(has) and not all(has) and not skip_bad:
        bad = paths[has.index(False)]
        raise DataError(
            f"{bad}: file name has no UTM coordinates, but other images in {folder} have them; rename it, "
            f"set labels='none' to ignore positions, or skip_bad to leave such files out"
        )
    return any(has)


# ---- training sets -----------------------------------------------------------------------------------
def train_folder(root: Path, split: str = "train") -> Path:
    """``ROOT/images/<split>`` in gmberton's layout, else ROOT itself (any folder of images)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if (root / "images").is_dir():
        if (root / "images" / split).is_dir():
            return root / "images" / split
        raise DataError(
            f"{root} is in gmberton's layout but has no images/{split}/ (training on the test split would leak); "
            "point folder:PATH at a folder of training images instead"
        )
    return root


def read_train_folder(
    root: Path | None,
    *,
    name: str | None = None,
    split: str = "train",
    labels: Labels = "auto",
    place_radius_m: float = 10.0,
    skip_bad: bool = False,
    validate: Validate = "quick",
) -> TrainSet:
    """Images with ``@east@north@`` names are grouped into places (within ``place_radius_m``); else label-free.

    ``labels="auto"``: places when every name has coordinates, label-free when none has, an error naming the
    first file without coordinates when only some have (with skip_bad those files are left out).
    """
    if root is None:
        raise DataError("this dataset needs a path: give it as NAME:PATH (e.g. folder:~/my_frames)")
    base = train_folder(Path(root), split)
    paths = list_images(base)
    if labels == "auto":
        labels = "positions" if names_have_positions(paths, base, skip_bad) else "none"
    skipped: list[str] = []
    images = read_image_list(base, positions=labels == "positions", skip_bad=skip_bad, validate=validate, skipped=skipped)
    place_ids = group_places(images.positions, place_radius_m) if images.positions is not None else None
    train = TrainSet(name or Path(root).name or "folder", images, place_ids)
    train.skipped = skipped
    train.skip_bad = skip_bad
    _note_skipped(train.notes, skipped, base)
    return train


def _has_utm(path: Path) -> bool:
    try:
        parse_utm(path)
    except DataError:
        return False
    return True


def group_places(positions: np.ndarray, radius_m: float) -> np.ndarray:
    """Greedy clustering: each unassigned image, in order, starts a place that takes every unassigned image
    within ``radius_m`` of it. A grid of ``radius_m`` cells keeps it linear in the number of images."""
    positions = np.asarray(positions, dtype=np.float64)
    cells = np.floor(positions / radius_m).astype(np.int64)
    grid: dict[tuple[int, int], list[int]] = {}
    for i, (cx, cy) in enumerate(cells.tolist()):
        grid.setdefault((cx, cy), []).append(i)
    ids = np.full(len(positions), -1, dtype=np.int64)
    next_id = 0
    for i in range(len(positions)):
        if ids[i] >= 0:
            continue
        cx, cy = cells[i]
        near = [j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in grid.get((cx + dx, cy + dy), ()) if ids[j] < 0]
        cand = np.array(near, dtype=np.int64)
        d2 = ((positions[cand] - positions[i]) ** 2).sum(1)
        ids[cand[d2 <= radius_m**2]] = next_id
        next_id += 1
    return ids


def read_protocol_test_set(
    params,
    name: str,
    expected_by_split: dict[str, dict[str, int]],
    *,
    order: Order = "none",
    root: Path | None = None,
) -> TestSet:
    """A published test set in gmberton's layout: reads ``params.split`` and attaches that split's published
    counts (``load_dataset`` warns loudly when the disk differs). ``params`` is a FolderTestParams."""
    return read_test_folder(
        root if root is not None else params.root,
        name=name,
        split=params.split,
        skip_bad=params.skip_bad,
        validate=params.check,
        order=order,
        expected=expected_by_split.get(params.split, {}),
        shuffle_seed=params.shuffle_seed,
    )
