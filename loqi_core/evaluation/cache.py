"""The evaluation cache: degraded images and descriptors on disk, each file checked before it is trusted.

Layout under the cache root (``--cache-dir``, default ``$LOQI_CACHE`` or ``~/.cache/loqi``)::

    eval/images/<key>/shard_00000.bin (+ .json)   degraded images of one image list, one spec, one seed (raw uint8)
    eval/descriptors/<key>/descriptors.npy (+ .json)   float32 N×D, written as a memory map

``<key>`` is a digest of everything the content depends on: the image files (paths, sizes, modification
times), the degradation spec and seed, the model's weights and preprocessing (descriptors only) and the
code versions. Every data file has a JSON sidecar with its size and sha256; a file whose sidecar is missing
or does not match (a run killed mid-write, a truncated copy) is deleted and rebuilt, never used.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from loqi_core.errors import ConfigError, describe_os_error
from loqi_core.models.weights import cache_dir, sha256_of
from loqi_core.util.fileio import write_bytes, write_text
from loqi_core.util.rundir import remove_abandoned, writer_tag

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.data.sets import ImageList

log = logging.getLogger("loqi.cache")

EVAL_CACHE_VERSION = 2
"""Bump when the cached formats or the extraction pipeline change meaning (2: images decode with their EXIF
orientation applied, ``loqi_core.data.images``)."""


def digest(obj: Any, length: int = 24) -> str:
    """A short stable hash of a JSON-able object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def image_list_fingerprint(images: "ImageList") -> str:
    """Hash of the files' paths, sizes and modification times, and of the sequence order."""
    h = hashlib.sha256()
    for path in images.paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(errors="surrogateescape"))
        except OSError:
            h.update(f"{path}\0missing\n".encode(errors="surrogateescape"))
    h.update(json.dumps(images.sequences).encode())
    return h.hexdigest()[:24]


def model_fingerprint(model: "torch.nn.Module") -> str:
    """Hash of the weights' bytes and of what the model is (method, parts, params, preprocessing)."""
    import torch

    h = hashlib.sha256()
    info = {k: v for k, v in getattr(model, "info", {}).items() if k != "weights"}
    preprocess = getattr(model, "preprocess", None)
    if preprocess is not None:
        info["preprocess"] = preprocess.model_dump(mode="json")
    h.update(json.dumps(info, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def seal(path: Path, meta: dict[str, Any] | None = None) -> None:
    """Record a finished data file's size and sha256 (plus ``meta``) in its sidecar."""
    record = {"size": path.stat().st_size, "sha256": sha256_of(path), **(meta or {})}
    write_text(sidecar_of(path), json.dumps(record))


def check(path: Path) -> dict[str, Any] | None:
    """The sidecar of an intact data file; None when absent, and None (after deleting both) when corrupt."""
    side = sidecar_of(path)
    if not path.exists() and not side.exists():
        return None
    try:
        record = json.loads(side.read_text())
        ok = path.stat().st_size == record["size"] and sha256_of(path) == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        ok, record = False, None
    if ok:
        return record
    log.warning("cache file %s is incomplete or corrupt (size/sha256 mismatch); rebuilding it", path)
    return _discard(path)


@dataclass
class CacheStats:
    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)


class EvalCache:
    """Content-keyed cache for evaluation; ``enabled=False`` works in a throw-away folder instead."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        if enabled:
            self.root = Path(root) if root is not None else cache_dir()
        else:  # descriptors still stream to disk (memory maps), in a folder removed at exit
            self.root = Path(tempfile.mkdtemp(prefix="loqi-eval-"))
            atexit.register(shutil.rmtree, self.root, True)
        self.stats = CacheStats()

    def check_writable(self) -> None:
        """Fail before any work when the cache root cannot be created or written (read-only, a file in the way)."""
        try:
            (self.root / "eval").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root / "eval"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"evaluation cache {self.root} is not writable: {describe_os_error(exc)}; "
                "or run with --no-cache"
            ) from None

    def entry(self, kind: str, key: dict[str, Any]) -> Path:
        """The folder for one cached item (created, with its key written as ``key.json`` for humans); what a killed
        writer left there (``*.partial.npy``, ``*.tmp``) is removed."""
        folder = self.root / "eval" / kind / digest({**key, "cache_version": EVAL_CACHE_VERSION})
        folder.mkdir(parents=True, exist_ok=True)
        for gone in remove_abandoned([*folder.glob("*.partial.npy"), *folder.glob("*.tmp")]):
            log.info("removed %s, left by a writer that was killed", gone)
        if not (folder / "key.json").exists():
            write_text(folder / "key.json", json.dumps(key, indent=2, default=str))
        return folder

    def lookup(self, path: Path) -> dict[str, Any] | None:
        """The sidecar of a valid cached file, recording a hit, a miss or a rebuild."""
        existed = path.exists() or sidecar_of(path).exists()
        record = check(path) if self.enabled else None
        if record is not None:
            self.stats.hits.append(str(path))
        elif existed and self.enabled:
            self.stats.rebuilt.append(str(path))
        else:
            self.stats.misses.append(str(path))
        return record


# ---- descriptors ---------------------------------------------------------------------------------


class DescriptorWriter:
    """Streams descriptors into ``descriptors.npy`` as a memory map; ``close()`` seals it."""

    def __init__(self, path: Path, n: int, dim: int) -> None:
        self.path = path
        self.tmp = path.with_name(f"{path.stem}.{writer_tag()}.partial.npy")
        try:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            _reserve(self.tmp)
        except BaseException:
            self.abort()
            raise
        self.filled = np.zeros(n, dtype=bool)

    def abort(self) -> None:
        """Drop the unfinished file (an extraction that failed leaves no ``*.partial.npy`` behind)."""
        self.__dict__.pop("array", None)
        self.tmp.unlink(missing_ok=True)

    def write(self, indices: Iterable[int], rows: np.ndarray) -> None:
        idx = np.fromiter(indices, dtype=np.int64)
        self.array[idx] = rows
        self.filled[idx] = True

    def close(self, meta: dict[str, Any] | None = None) -> np.ndarray:
        """Flush, check every row was written, rename into place, seal; returns a read-only memory map."""
        if not self.filled.all():
            missing = np.flatnonzero(~self.filled)[:5].tolist()
            raise RuntimeError(f"descriptor rows never written (first: {missing}) for {self.path}")
        self.array.flush()
        del self.array
        self.tmp.replace(self.path)
        seal(self.path, meta)
        return np.load(self.path, mmap_mode="r")


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk then raises ENOSPC here, not SIGBUS mid-write."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # file systems without fallocate: best effort
                raise OSError(exc.errno, exc.strerror, str(path)) from None


def load_descriptors(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


# ---- degraded images -----------------------------------------------------------------------------

SHARD_FORMAT = "uint8-chw"
"""How a shard stores degraded images: each image's uint8 C×H×W bytes, concatenated, with the shapes in the sealed
sidecar, so a cache hit is a read and a hash, no decoding. Part of the images' cache key: a cache written in
another format (loqi ≤ 0.x wrote lossless PNGs) is never read as this one."""


def write_shard(path: Path, images: list["torch.Tensor"], nbytes: list[int] | None, indices: list[int]) -> None:
    """Degraded uint8 images, raw and concatenated in one file; shapes, indices and codec bytes in the sidecar."""
    write_bytes(path, b"".join(memoryview(img.contiguous().numpy()).cast("B") for img in images))
    seal(path, {"format": SHARD_FORMAT, "shapes": [list(img.shape) for img in images], "indices": indices, "nbytes": nbytes})


def read_shard(path: Path) -> tuple[list[int], list["torch.Tensor"], list[int] | None] | None:
    """(indices, images, codec bytes) of an intact shard, read in one pass and checked against its sidecar (size,
    sha256, format); None when there is none, and None after deleting one that is incomplete, corrupt or of
    another format. The images are views into one buffer (a DataLoader worker hands it over in one piece)."""
    import torch

    side = sidecar_of(path)
    if not path.exists() and not side.exists():
        return None
    try:
        record = json.loads(side.read_text())
        if record.get("format") != SHARD_FORMAT:
            log.warning("cache file %s was written in another format (%s); rebuilding it", path, record.get("format", "PNG"))
            return _discard(path)
        shapes = [tuple(int(d) for d in shape) for shape in record["shapes"]]
        sizes = [math.prod(shape) for shape in shapes]
        if sum(sizes) != record["size"] or path.stat().st_size != record["size"]:
            raise ValueError("size mismatch")
        buffer = torch.empty(record["size"], dtype=torch.uint8)
        with open(path, "rb") as f:
            ok = f.readinto(memoryview(buffer.numpy())) == record["size"] and f.read(1) == b""
        ok = ok and hashlib.sha256(buffer.numpy()).hexdigest() == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        ok = False
    if not ok:
        log.warning("cache file %s is incomplete or corrupt (size/sha256 mismatch); rebuilding it", path)
        return _discard(path)
    offsets = np.cumsum([0, *sizes]).tolist()
    images = [buffer[offsets[k] : offsets[k + 1]].view(shape) for k, shape in enumerate(shapes)]
    return list(record["indices"]), images, record.get("nbytes")


def _discard(path: Path) -> None:
    for p in (path, sidecar_of(path)):
        p.unlink(missing_ok=True)
