"""The index directory's format: which files it holds (fixed by the format, never read from the record), what
``index.json`` says (validated field by field before anything trusts it), and the files checked against it.

Layout of ``INDEX/`` (format ``loqi-index`` v3)::

    index.json        format, model identity (method, parts, params, preprocessing, weights, fingerprint), dataset,
                      degradation, protocol, search settings, code versions, size and sha256 of every file below
    descriptors.npy   float32 N×D, L2-normalised (the eval engine's extraction; exact re-ranking reads it)
    faiss.index       FAISS inner-product index over those descriptors: flat (exact) or IVF-PQ (re-ranked exactly)
    names.json        the N database image names, a JSON list (any name a file system allows round-trips)
    utm.npy           float64 N×2 UTM east/north in metres (NaN where the dataset has no positions)
    geo.npy           float64 N×3 latitude, longitude (degrees, WGS 84) and UTM zone number (NaN where unknown)
    order.npy         int64 N×2 capture order: traverse and position in it ((-1, -1) where the images have none)
    thumbnails.bin    small JPEGs of the database images, concatenated (optional)
    thumbnails.npy    int64 N+1 byte offsets into thumbnails.bin
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loqi_core.plugin import LoqiError

FORMAT = "loqi-index"
FORMAT_VERSION = 3
RECORD = "index.json"
DATA_FILES = ("descriptors.npy", "faiss.index", "names.json", "utm.npy", "geo.npy", "order.npy")
THUMBNAIL_FILES = ("thumbnails.bin", "thumbnails.npy")
MAX_RECORD_BYTES = 16 * 2**20
"""index.json is a few kB; anything far larger is not one (and is never read whole)."""


class IndexDirError(LoqiError):
    """An index directory that is missing, incomplete, corrupt, or built with another model."""


def expected_files(thumbnails: bool) -> tuple[str, ...]:
    """The data files an index holds besides index.json: fixed by the format, whatever the record lists."""
    return DATA_FILES + (THUMBNAIL_FILES if thumbnails else ())


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FileRecord(_Part):
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelInfo(_Part):
    method: str
    encoder: str
    aggregator: str


class ModelRecord(_Part):
    method: str | None
    encoder: str | None
    aggregator: str | None
    encoder_params: dict[str, Any] | None
    aggregator_params: dict[str, Any] | None
    image_size: list[int] | None
    seed: int = Field(ge=0)
    weights: str
    fingerprint: str
    info: ModelInfo
    preprocess: dict[str, Any]


class SearchRecord(_Part):
    backend: Literal["flat", "ivfpq"]
    note: str
    nlist: int | None = Field(None, ge=1)
    m: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    refine: int | None = Field(None, ge=0)
    trained_on: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _ivfpq_settings(self) -> "SearchRecord":
        if self.backend == "ivfpq" and None in (self.nlist, self.m, self.nprobe, self.refine, self.trained_on):
            raise ValueError("an ivfpq index records nlist, m, nprobe, refine and trained_on")
        return self


class AdditionRecord(_Part):
    created: str
    folder: str
    images: int = Field(ge=1)
    first: int = Field(ge=1)


class IndexRecord(_Part):
    """What index.json must hold for loqi to trust the directory (other keys are kept, not needed)."""

    format: Literal["loqi-index"]
    format_version: Literal[3]
    created: str
    model: ModelRecord
    dataset: str
    dataset_name: str
    built_from: Literal["dataset", "database"]
    database_images: int = Field(ge=1)
    dim: int = Field(ge=1)
    degradation: str
    protocol: str
    precision: str
    search: SearchRecord
    utm_zone: str | None
    versions: dict[str, str]
    thumbnails: bool
    additions: list[AdditionRecord]
    files: dict[str, FileRecord]

    @model_validator(mode="after")
    def _the_format_s_files(self) -> "IndexRecord":
        expected = set(expected_files(self.thumbnails))
        if set(self.files) != expected:
            missing, extra = sorted(expected - set(self.files)), sorted(set(self.files) - expected)
            raise ValueError("files must list exactly " + ", ".join(sorted(expected)) + " (" + "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "",
                                  f"not of the format: {', '.join(map(repr, extra))}" if extra else "") if part) + ")")  # fmt: skip
        return self


def read_meta(path: Path) -> dict[str, Any]:
    """``index.json`` of an index directory, validated: a wrong field is one line naming it."""
    path = Path(path)
    meta_file = path / RECORD
    try:
        st = os.stat(meta_file)
    except FileNotFoundError:
        raise IndexDirError(f"{path} is not a loqi index (no {RECORD}): build one with `loqi index build`") from None
    except NotADirectoryError:
        raise IndexDirError(f"{path} is not a loqi index (not a directory)") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD_BYTES:
        raise IndexDirError(f"{meta_file}: not a loqi index record (not a regular file of at most {MAX_RECORD_BYTES} bytes)")
    try:
        meta = json.loads(meta_file.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise IndexDirError(f"{meta_file}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise IndexDirError(f"{meta_file}: not a loqi index record (a JSON {type(meta).__name__} where an object is expected)")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise IndexDirError(f"{meta_file}: format {meta.get('format')} v{meta.get('format_version')}, "
                            f"this loqi reads {FORMAT} v{FORMAT_VERSION}: rebuild the index")  # fmt: skip
    try:
        IndexRecord.model_validate(meta)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                            for e in exc.errors()[:3])  # fmt: skip
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise IndexDirError(f"{meta_file}: {reasons}{more}") from None
    return meta


def verify_files(path: Path, meta: dict[str, Any], full: bool = False) -> list[str]:
    """Problems with the index's files: missing, not a regular file, or of the wrong size (and, with ``full``, the
    wrong sha256). Only the format's files are looked at, each inside ``path``, read no further than its size."""
    from loqi_core.plugin import sha256_of

    problems = []
    for name in expected_files(meta["thumbnails"]):
        expected, file = meta["files"][name], Path(path) / name
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{name}: not a regular file")
        elif st.st_size != expected["size"]:
            problems.append(f"{name}: {st.st_size} bytes, expected {expected['size']}")
        elif full and sha256_of(file) != expected["sha256"]:
            problems.append(f"{name}: sha256 differs from index.json")
    return problems


def describe(meta: dict[str, Any], path: Path) -> str:
    """``loqi index info``: what the index holds and how it was made, a few lines."""
    model, search = meta["model"], meta["search"]
    size = sum(f["size"] for f in meta["files"].values())
    lines = [
        f"index: {path} ({size / 1e6:.1f} MB, created {meta['created']})",
        f"database: {meta['database_images']} images of {meta['dataset']}, degradation {meta['degradation']}",
        f"model: {model['info']['method']} (encoder {model['info']['encoder']}, aggregator {model['info']['aggregator']}), "
        f"{meta['dim']}-d, weights {model['weights']}, fingerprint {model['fingerprint']}",
        f"preprocessing: {json.dumps(model['preprocess'])}",
        f"search: {search['backend']}" + "".join(f", {k} {search[k]}" for k in ("nlist", "m", "nprobe", "refine") if search.get(k) is not None)
        + f" ({search['note']})",
        f"protocol: {meta['protocol']}; precision {meta['precision']}",
        f"versions: {', '.join(f'{k} {v}' for k, v in sorted(meta['versions'].items()))}",
        f"thumbnails: {'yes' if meta['thumbnails'] else 'no'}",
    ]  # fmt: skip
    for added in meta["additions"]:
        lines.append(f"added: {added['images']} images of {added['folder']} (from index {added['first']}, {added['created']})")
    return "\n".join(lines)
