"""A self-describing index directory: a database encoded once, searchable by a server that checks the model.

Layout of ``INDEX/``::

    index.json        format, model identity (method, parts, params, preprocessing, weights, fingerprint), dataset,
                      degradation, protocol, search settings, code versions, size and sha256 of every file below
    descriptors.npy   float32 N×D, L2-normalised (the eval engine's extraction; exact re-ranking reads it)
    faiss.index       FAISS inner-product index: flat (exact) or IVF-PQ (approximate, re-ranked exactly)
    names.txt         one database image name per line (its path under the dataset's common folder)
    utm.npy           float64 N×2 UTM east/north in metres (NaN where the dataset has no positions)
    thumbnails.bin    small JPEGs of the database images, concatenated (optional)
    thumbnails.npy    int64 N+1 byte offsets into thumbnails.bin
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from loqi_core.plugin import LoqiError

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.plugin import IVFPQParams, Plugins, RunConfig, VPRModel

FORMAT = "loqi-index"
FORMAT_VERSION = 1
THUMBNAIL_SIDE = 160
"""Longer side of the stored thumbnails, in pixels."""
ADD_CHUNK = 65536
"""Database rows added to a flat FAISS index at a time (the memory-mapped descriptors never load whole)."""


class IndexDirError(LoqiError):
    """An index directory that is missing, incomplete, corrupt, or built with another model."""


def _relative_names(paths: list[Path]) -> list[str]:
    """Each path relative to the folder all of them share (the dataset's database folder)."""
    if not paths:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(root).as_posix() for p in paths]


def build_model_from(record: dict[str, Any], weights: str, plugins: "Plugins") -> "VPRModel":
    """The model an index record describes (random init seeded as ``loqi eval`` seeds it), with ``weights``."""
    import torch

    from loqi_core import build_model

    torch.manual_seed(record["seed"])
    return build_model(
        record["method"], encoder=record["encoder"], aggregator=record["aggregator"],
        encoder_params=record["encoder_params"], aggregator_params=record["aggregator_params"], weights=weights,
        image_size=record["image_size"], plugins=plugins,
    )  # fmt: skip


def _weights_record(model: "VPRModel") -> str:
    """The loaded weights as the model reports them, made absolute when they are a file or folder."""
    weights = str(model.info["weights"])
    return str(Path(weights).resolve()) if Path(weights).exists() else weights


def _thumbnail(path: Path) -> bytes:
    import io

    from PIL import Image

    from loqi_core.plugin import read_image

    img = Image.fromarray(read_image(path).permute(1, 2, 0).numpy())
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _write_thumbnails(paths: list[Path], folder: Path) -> None:
    from loqi_core.plugin import progress

    offsets = [0]
    with open(folder / "thumbnails.bin", "wb") as f:
        for path in progress(paths, desc="thumbnails", unit="img", leave=False):
            blob = _thumbnail(path)
            f.write(blob)
            offsets.append(offsets[-1] + len(blob))
    np.save(folder / "thumbnails.npy", np.asarray(offsets, dtype=np.int64))


def _faiss_index(database: np.ndarray, backend: str, ivf: "IVFPQParams", seed: int):
    import faiss

    from loqi_core.plugin import build_ivfpq

    if backend == "ivfpq":
        return build_ivfpq(database, ivf, seed=seed)
    index = faiss.IndexFlatIP(database.shape[1])
    for d0 in range(0, len(database), ADD_CHUNK):
        index.add(np.ascontiguousarray(database[d0 : d0 + ADD_CHUNK], dtype=np.float32))
    return index


def build_index(
    config: "RunConfig",
    dataset: str,
    out: Path,
    *,
    backend: str = "flat",
    ivf: "IVFPQParams | None" = None,
    thumbnails: bool = True,
    force: bool = False,
    plugins: "Plugins | None" = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Encode the database of ``dataset`` with the configured model (via the eval cache) and write ``out``."""
    import faiss

    from loqi_core import load_dataset, parse_degradation
    from loqi_core.plugin import (
        EvalCache,
        IVFPQParams,
        extract,
        get_plugins,
        ivfpq_settings,
        loader_workers,
        model_fingerprint,
        model_versions,
        resolve_device,
        sha256_of,
        use_bf16,
    )

    out = Path(out)
    if out.exists() and not force:
        raise IndexDirError(f"{out} already exists: choose another --out or pass --force to replace it")
    if backend not in ("flat", "ivfpq"):
        raise IndexDirError(f'--index: unknown index type "{backend}" (flat, ivfpq)')
    plugins = plugins or get_plugins()
    ivf = ivf or IVFPQParams()
    degradation = parse_degradation(config.degrade, plugins)
    test = load_dataset(dataset, "test", root=config.data_root, plugins=plugins)
    images = test.database
    m = config.model
    record: dict[str, Any] = {
        "method": m.method, "encoder": m.encoder, "aggregator": m.aggregator, "encoder_params": m.encoder_params,
        "aggregator_params": m.aggregator_params, "image_size": list(m.image_size) if m.image_size else None,
        "seed": config.seed,
    }  # fmt: skip
    model = build_model_from(record, m.weights, plugins)
    device = resolve_device(config.device)
    fingerprint = model_fingerprint(model)
    model = model.to(device).eval()
    # --database-weights: the map is encoded by other weights (a teacher) than the queries at serve time (its student)
    db_model = model if config.eval.database_weights is None else build_model_from(record, config.eval.database_weights, plugins)
    db_fingerprint = fingerprint if db_model is model else model_fingerprint(db_model)
    db_model = db_model.to(device).eval()
    bf16 = use_bf16(config.eval.precision, device)
    key = {"model": db_fingerprint, "code": model_versions(db_model, plugins), "precision": bf16}  # as evaluate() keys it
    cache = EvalCache(config.eval.cache_dir, enabled=config.eval.cache)
    echo(f"encoding {len(images)} database images of {test.name} with {db_model.info['method']} "
         f"(weights {db_model.info['weights']}, {device}), degradation {degradation.spec or 'none'}")
    t0 = time.perf_counter()
    database = extract(
        db_model, images, degradation, cache=cache, key=key, seed=config.seed, device=device,
        batch_size=config.eval.batch_size, num_workers=loader_workers(config.eval.num_workers, device.type),
        precision=config.eval.precision,
        cache_images=config.eval.cache_images, label=f"{test.name} database", plugins=plugins,
    )  # fmt: skip
    encode_s = time.perf_counter() - t0
    n, dim = database.shape
    degraded = f"degraded with {degradation.spec}" if degradation.spec not in ("", "none") else "clean"

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(database.filename, tmp / "descriptors.npy")
        t0 = time.perf_counter()
        faiss.write_index(_faiss_index(database, backend, ivf, config.seed), str(tmp / "faiss.index"))
        index_s = time.perf_counter() - t0
        (tmp / "names.txt").write_text("".join(name + "\n" for name in _relative_names(images.paths)))
        positions = images.positions if images.positions is not None else np.full((n, 2), np.nan)
        np.save(tmp / "utm.npy", np.asarray(positions, dtype=np.float64))
        if thumbnails:
            _write_thumbnails(images.paths, tmp)
        search: dict[str, Any] = {"backend": backend}
        if backend == "ivfpq":
            nlist, m_sub, nprobe = ivfpq_settings(n, dim, ivf)
            search |= {"nlist": nlist, "m": m_sub, "nprobe": nprobe, "refine": ivf.refine,
                       "note": f"approximate; the top {ivf.refine}·k re-ranked exactly from descriptors.npy" if ivf.refine
                       else "approximate, no re-ranking"}  # fmt: skip
        else:
            search["note"] = "exact inner product (FAISS flat); ties ranked by the lower database index"
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {**record, "weights": _weights_record(model), "fingerprint": fingerprint,
                      "info": model.info, "preprocess": model.preprocess.model_dump(mode="json")},
            "dataset": dataset, "dataset_name": test.name, "database_images": n, "dim": dim,
            "degradation": degradation.spec or "none",
            "protocol": (f"database images {degraded} (seed {config.seed}) and encoded by "
                         + ("the model above" if db_model is model else "database_model (weights other than the model's)")
                         + "; queries are encoded by the model above at serve time; score = inner product of "
                         "L2-normalised descriptors, distance = sqrt(2 - 2*score)"),
            **({} if db_model is model else {"database_model": {"weights": _weights_record(db_model), "fingerprint": db_fingerprint}}),
            "precision": "bf16 autocast" if bf16 else "fp32",
            "search": search,
            "versions": model_versions(model, plugins),
            "thumbnails": thumbnails,
            "timings_s": {"encode": round(encode_s, 3), "index": round(index_s, 3)},
            "files": {p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in sorted(tmp.iterdir())},
        }  # fmt: skip
        (tmp / "index.json").write_text(json.dumps(meta, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class Index:
    """An index directory opened for serving: descriptors memory-mapped, the FAISS index in memory."""

    path: Path
    meta: dict[str, Any]
    descriptors: np.ndarray
    faiss_index: Any
    names: list[str]
    utm: np.ndarray
    thumbnail_offsets: np.ndarray | None

    @property
    def size(self) -> int:
        return len(self.names)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` database indices and scores per query, re-ranked exactly (ties by the lower index)."""
        from loqi_core.plugin import refine

        q = np.ascontiguousarray(queries, dtype=np.float32)
        search = self.meta["search"]
        if search["backend"] == "ivfpq" and not search["refine"]:
            s, i = self.faiss_index.search(q, k)
            return i.astype(np.int64), np.where(i < 0, -np.inf, s).astype(np.float32)
        wide = k * search["refine"] if search["backend"] == "ivfpq" else k + 1
        _, candidates = self.faiss_index.search(q, max(k, min(self.size, wide)))
        s, i = refine(self.descriptors, q, candidates.astype(np.int64), k)
        return i, s

    def thumbnail(self, i: int) -> bytes | None:
        if self.thumbnail_offsets is None or not 0 <= i < self.size:
            return None
        start, end = int(self.thumbnail_offsets[i]), int(self.thumbnail_offsets[i + 1])
        with open(self.path / "thumbnails.bin", "rb") as f:
            f.seek(start)
            return f.read(end - start)


def read_meta(path: Path) -> dict[str, Any]:
    """``index.json`` of an index directory, checked to be one."""
    path = Path(path)
    meta_file = path / "index.json"
    if not meta_file.exists():
        raise IndexDirError(f"{path} is not a loqi index (no index.json): build one with `loqi index build`")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as exc:
        raise IndexDirError(f"{meta_file}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise IndexDirError(f"{meta_file}: format {meta.get('format')} v{meta.get('format_version')}, "
                          f"this loqi reads {FORMAT} v{FORMAT_VERSION}: rebuild the index")  # fmt: skip
    return meta


def verify_files(path: Path, meta: dict[str, Any], full: bool = False) -> list[str]:
    """Problems with the index's files: missing or of the wrong size (and, with ``full``, the wrong sha256)."""
    from loqi_core.plugin import sha256_of

    problems = []
    for name, expected in meta["files"].items():
        file = Path(path) / name
        if not file.exists():
            problems.append(f"{name}: missing")
        elif file.stat().st_size != expected["size"]:
            problems.append(f"{name}: {file.stat().st_size} bytes, expected {expected['size']}")
        elif full and sha256_of(file) != expected["sha256"]:
            problems.append(f"{name}: sha256 differs from index.json")
    return problems


def open_index(path: Path) -> Index:
    """Open an index directory for searching; a missing or truncated file is an error naming it."""
    import faiss

    path = Path(path)
    meta = read_meta(path)
    problems = verify_files(path, meta)
    if problems:
        raise IndexDirError(f"{path} is incomplete or corrupt: {'; '.join(problems)}")
    descriptors = np.load(path / "descriptors.npy", mmap_mode="r")
    index = faiss.read_index(str(path / "faiss.index"))
    if hasattr(index, "nprobe") and "nprobe" in meta["search"]:
        index.nprobe = meta["search"]["nprobe"]
    names = (path / "names.txt").read_text().splitlines()
    utm = np.load(path / "utm.npy")
    n = meta["database_images"]
    if not (len(descriptors) == len(names) == len(utm) == index.ntotal == n):
        raise IndexDirError(f"{path}: the files disagree on the database size (index.json says {n})")
    offsets = np.load(path / "thumbnails.npy") if meta.get("thumbnails") else None
    return Index(path, meta, descriptors, index, names, utm, offsets)


def check_model(meta: dict[str, Any], model: "VPRModel", index_path: Path) -> None:
    """Refuse a model whose weights or architecture differ from the one that encoded the index."""
    from loqi_core.plugin import model_fingerprint

    built = meta["model"]
    fingerprint = model_fingerprint(model)
    if fingerprint != built["fingerprint"]:
        raise IndexDirError(
            f"{index_path} was built with {built['info']['method']} weights \"{built['weights']}\" (model fingerprint "
            f"{built['fingerprint']}), but the model to serve has weights \"{model.info['weights']}\" (fingerprint "
            f"{fingerprint}): its descriptors would not be comparable. Build an index with the same model: "
            f"loqi index build --method {built['info']['method']} --weights {model.info['weights']} --dataset "
            f"{meta['dataset']} --out NEW_INDEX"
        )


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
        f"search: {search['backend']}" + "".join(f", {k} {search[k]}" for k in ("nlist", "m", "nprobe", "refine") if k in search)
        + f" ({search['note']})",
        f"protocol: {meta['protocol']}; precision {meta['precision']}",
        f"versions: {', '.join(f'{k} {v}' for k, v in sorted(meta['versions'].items()))}",
        f"thumbnails: {'yes' if meta['thumbnails'] else 'no'}",
    ]  # fmt: skip
    return "\n".join(lines)
