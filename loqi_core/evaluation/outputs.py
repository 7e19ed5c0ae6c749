"""Descriptors and retrieval pairs of an evaluation, written for other tools (numpy, FAISS, hloc) to read.

    descriptors/<set>__<row>/database.npy, queries.npy   float32, one L2-normalised row per image, in name order
    descriptors/<set>__<row>/database.txt, queries.txt   the image names, line i = row i
    descriptors/<set>__<row>/info.json                   root folder of the names, shapes, degradation, weights
    pairs/<set>__<row>.txt                               hloc's format: "query_name db_name", K lines per query, best first

Names are paths relative to the common folder of the database and the queries (``database/@...@.jpg``,
``queries/@...@.jpg`` in gmberton's layout), as hloc names images relative to its image directory. A name one line
cannot hold (a line break for any reader, ``\n`` to U+2028, or bytes that are not UTF-8) is refused, naming the
file, before anything is evaluated (``check_line_names``): the lists stay aligned with the rows.
Every file is written atomically: a killed run leaves the old file or the whole new one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from loqi_core.errors import DataError
from loqi_core.util.fileio import located, partial_file, write_text

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.evaluation.results import EvalResult


LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
"""Every character ``str.splitlines`` breaks a line at: a name holding one would read back as two."""


def check_line_names(paths: Sequence[Path], dataset: str) -> None:
    """Refuse, naming it, an image of ``dataset`` whose name cannot be one line of a UTF-8 name list."""
    for path in paths:
        name = str(path)
        found = LINE_BREAKS.search(name)
        if found:
            raise DataError(f"{dataset}: the image name {name!r} holds a line break ({found.group()!r}); name lists "
                            "(descriptors/*.txt, pairs) hold one name per line: rename the file")  # fmt: skip
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{dataset}: the image name {os.fsencode(name)!r} is not UTF-8, which name lists "
                            "(descriptors/*.txt, pairs) are: rename the file") from None  # fmt: skip


def image_names(database: Sequence[Path], queries: Sequence[Path]) -> tuple[Path, list[str], list[str]]:
    """The common folder of all images and each image's path relative to it (POSIX separators)."""
    paths = [Path(os.path.abspath(p)) for p in (*database, *queries)]  # symbolic links kept: names as the user sees them
    root = Path(os.path.commonpath([p.parent for p in paths]))
    names = [p.relative_to(root).as_posix() for p in paths]
    return root, names[: len(database)], names[len(database) :]


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as a float32 ``.npy`` file, atomically (a memory map is streamed, not loaded)."""
    try:
        with partial_file(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=np.float32))
    except OSError as exc:
        raise located(exc, path) from None


def write_descriptors(folder: Path, result: "EvalResult") -> Path:
    """The database and query descriptors of ``result`` with their image names, into ``folder``."""
    if result.database_descriptors is None or result.query_descriptors is None:
        raise ValueError(f"the evaluation of {result.dataset} kept no descriptors")
    check_line_names([*result.database_paths, *result.query_paths], result.dataset)
    root, db_names, q_names = image_names(result.database_paths, result.query_paths)
    folder.mkdir(parents=True, exist_ok=True)
    for part, array, names in (("database", result.database_descriptors, db_names),
                               ("queries", result.query_descriptors, q_names)):  # fmt: skip
        if len(array) != len(names):
            raise ValueError(f"{result.dataset} {part}: {len(array)} descriptors for {len(names)} images")
        save_npy(folder / f"{part}.npy", array)
        write_text(folder / f"{part}.txt", "".join(f"{n}\n" for n in names))
    p = result.protocol
    info = {"dataset": result.dataset, "root": str(root), "dim": int(result.database_descriptors.shape[1]),
            "n_database": len(db_names), "n_queries": len(q_names), "dtype": "float32", "l2_normalised": True,
            "database": p.get("database"), "queries": p.get("queries"), "weights": p.get("weights")}  # fmt: skip
    write_text(folder / "info.json", json.dumps(info, indent=2))
    return folder


def write_pairs(path: Path, result: "EvalResult", k: int) -> int:
    """hloc's retrieval pairs: ``query_name db_name``, the ``k`` best database images per query (fewer when the
    database is smaller), best first. Returns how many names hold whitespace (hloc splits lines on it)."""
    check_line_names([*result.database_paths, *result.query_paths], result.dataset)
    _, db_names, q_names = image_names(result.database_paths, result.query_paths)
    lines = []
    for q, row in enumerate(result.predictions[:, :k]):
        lines += [f"{q_names[q]} {db_names[d]}\n" for d in row.tolist() if d >= 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "".join(lines))
    return sum(1 for n in (*db_names, *q_names) if any(c.isspace() for c in n))
