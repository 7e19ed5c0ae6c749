"""An index directory: a database encoded once, searchable by a server that checks the model (its format, and
``index.json``, in ``loqi_plugin_serve.record``).

``build_index`` writes it whole into a hidden sibling and renames it into place, replacing only an index (never a
folder that is not one, never the dataset it reads). ``open_index`` refuses, in one line naming the file, anything
that does not hold what ``index.json`` says: every file's size; the sha256 of every file it reads whole (FAISS
index, names, positions, thumbnail offsets); the shape of every array; and, sampled, that the FAISS index holds the
very vectors of ``descriptors.npy``.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from loqi_plugin_serve.record import FORMAT, FORMAT_VERSION, RECORD, IndexDirError, expected_files, read_meta, verify_files

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.plugin import IVFPQParams, Plugins, RunConfig, TestSet, VPRModel

THUMBNAIL_SIDE = 160
"""Longer side of the stored thumbnails, in pixels."""
ADD_CHUNK = 65536
"""Database rows added to a flat FAISS index at a time (the memory-mapped descriptors never load whole)."""
SAMPLE_ROWS = 64
"""Rows of descriptors.npy checked against the FAISS index when an index is opened."""


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


def _check_out(out: Path, force: bool) -> None:
    """``out`` may be written: new, or (with ``force``) an index and nothing else, which will be replaced."""
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise IndexDirError(f"{out} already exists: choose another --out or pass --force to replace it")
    if out.is_symlink() or not out.is_dir():
        raise IndexDirError(f"{out} is not an index directory: --force replaces only an index; choose another --out")
    try:
        meta = read_meta(out)
    except IndexDirError as exc:
        raise IndexDirError(f"--force replaces only a loqi index, and {out} is not one ({exc}); choose another --out") from None
    own = {RECORD, *expected_files(meta["thumbnails"])}
    others = sorted(p.name for p in out.iterdir() if p.name not in own)
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise IndexDirError(f"--force replaces only a loqi index, and {out} also holds {listed}: move them away, "
                            "or choose another --out")  # fmt: skip


def _check_not_the_input(out: Path, test: "TestSet") -> None:
    """``out`` neither is nor lies inside nor holds the folder of the dataset's images."""
    paths = [*test.database.paths, *test.queries.paths]
    for resolve in (os.path.abspath, os.path.realpath):
        root = Path(os.path.commonpath([resolve(p.parent) for p in paths]))
        target = Path(resolve(out))
        if target == root or root in target.parents or target in root.parents:
            raise IndexDirError(f"--out {out} {'is' if target == root else 'lies inside' if root in target.parents else 'holds'} "
                                f"the dataset's images ({root}): the index goes elsewhere, the dataset is never written")  # fmt: skip


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
    """Encode the database of ``dataset`` with the configured model (via the eval cache) and write ``out``.

    ``force`` replaces an index already at ``out``, and only an index (recognised by its record, holding nothing
    else); what a killed build left beside ``out`` is removed first.
    """
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
        remove_abandoned,
        resolve_device,
        sha256_of,
        use_bf16,
        writer_tag,
    )

    out = Path(out)
    if backend not in ("flat", "ivfpq"):
        raise IndexDirError(f'--index: unknown index type "{backend}" (flat, ivfpq)')
    _check_out(out, force)
    plugins = plugins or get_plugins()
    ivf = ivf or IVFPQParams()
    degradation = parse_degradation(config.degrade, plugins)
    test = load_dataset(dataset, "test", root=config.data_root, plugins=plugins)
    _check_not_the_input(out, test)
    images = test.database
    names = _relative_names(images.paths)
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
    bf16 = use_bf16(config.eval.precision, device)
    key = {"model": fingerprint, "code": model_versions(model, plugins), "precision": bf16}  # as evaluate() keys it
    cache = EvalCache(config.eval.cache_dir, enabled=config.eval.cache)
    echo(f"encoding {len(images)} database images of {test.name} with {model.info['method']} ({device}), "
         f"degradation {degradation.spec or 'none'}")
    t0 = time.perf_counter()
    database = extract(
        model, images, degradation, cache=cache, key=key, seed=config.seed, device=device,
        batch_size=config.eval.batch_size, num_workers=loader_workers(config.eval.num_workers, device.type),
        precision=config.eval.precision,
        cache_images=config.eval.cache_images, label=f"{test.name} database", plugins=plugins,
    )  # fmt: skip
    encode_s = time.perf_counter() - t0
    n, dim = database.shape
    degraded = f"degraded with {degradation.spec}" if degradation.spec not in ("", "none") else "clean"

    leftovers = glob.escape(f".{out.name}")
    for gone in remove_abandoned([*out.parent.glob(f"{leftovers}.partial-*"), *out.parent.glob(f"{leftovers}.replaced-*")]):
        echo(f"removed {gone}, left by a build that was killed")
    tmp = out.parent / f".{out.name}.partial-{writer_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copyfile(database.filename, tmp / "descriptors.npy")
        t0 = time.perf_counter()
        faiss.write_index(_faiss_index(database, backend, ivf, config.seed), str(tmp / "faiss.index"))
        index_s = time.perf_counter() - t0
        (tmp / "names.json").write_text(json.dumps(names))
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
            "protocol": (f"database images {degraded} "
                         f"(seed {config.seed}) and encoded by the model above; queries are encoded by the same model at "
                         "serve time; score = inner product of L2-normalised descriptors, distance = sqrt(2 - 2*score)"),
            "precision": "bf16 autocast" if bf16 else "fp32",
            "search": search,
            "versions": model_versions(model, plugins),
            "thumbnails": thumbnails,
            "timings_s": {"encode": round(encode_s, 3), "index": round(index_s, 3)},
            "files": {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name)}
                      for name in expected_files(thumbnails)},
        }  # fmt: skip
        (tmp / RECORD).write_text(json.dumps(meta, indent=2, default=str))
        if out.exists() or out.is_symlink():
            _check_out(out, force)  # again: it may have changed during the encoding
            old = out.parent / f".{out.name}.replaced-{writer_tag()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
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
        """Top-``k`` database indices and scores per query: a flat index as ``loqi eval`` searches (the same exact
        scores, ties by the lower index); an IVF-PQ index's top refine·k re-ranked with those scores."""
        from loqi_core.plugin import refine, search_flat_index

        q = np.ascontiguousarray(queries, dtype=np.float32)
        search = self.meta["search"]
        if search["backend"] == "flat":
            return search_flat_index(self.faiss_index, self.descriptors, q, k)
        if not search["refine"]:
            s, i = self.faiss_index.search(q, k)
            return i.astype(np.int64), np.where(i < 0, -np.inf, s).astype(np.float32)
        _, candidates = self.faiss_index.search(q, max(k, min(self.size, k * search["refine"])))
        s, i = refine(self.descriptors, q, candidates.astype(np.int64), k)
        return i, s

    def thumbnail(self, i: int) -> bytes | None:
        if self.thumbnail_offsets is None or not 0 <= i < self.size:
            return None
        start, end = int(self.thumbnail_offsets[i]), int(self.thumbnail_offsets[i + 1])
        with open(self.path / "thumbnails.bin", "rb") as f:
            f.seek(start)
            return f.read(end - start)


def _whole(path: Path, meta: dict[str, Any], name: str) -> bytes:
    """A file read whole, checked against its sha256 in index.json."""
    import hashlib

    data = (path / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["files"][name]["sha256"]:
        raise IndexDirError(f"{path / name}: sha256 differs from index.json (changed or damaged since the build): rebuild the index")
    return data


def _array(file: Path, data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexDirError(f"{file}: not a .npy array ({exc})") from None
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise IndexDirError(f"{file}: a {array.dtype} array of shape {array.shape}, expected {dtype} {shape}")
    return array


def _names(file: Path, data: bytes, n: int) -> list[str]:
    try:
        names = json.loads(data)
    except ValueError as exc:
        raise IndexDirError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(names, list) or len(names) != n or not all(isinstance(name, str) for name in names):
        raise IndexDirError(f"{file}: expected a list of {n} names (index.json: {n} database images)")
    return names


def _descriptors(file: Path, n: int, dim: int) -> np.ndarray:
    try:
        descriptors = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexDirError(f"{file}: not a readable .npy array ({exc})") from None
    if descriptors.dtype != np.float32 or descriptors.shape != (n, dim) or not descriptors.flags.c_contiguous:
        raise IndexDirError(f"{file}: a {descriptors.dtype} array of shape {descriptors.shape}, expected float32 ({n}, {dim})")
    return descriptors


def _faiss(file: Path, meta: dict[str, Any]) -> Any:
    import faiss

    from loqi_core.plugin import sha256_of

    if sha256_of(file) != meta["files"][file.name]["sha256"]:
        raise IndexDirError(f"{file}: sha256 differs from index.json (changed or damaged since the build): rebuild the index")
    try:
        index = faiss.read_index(str(file))
    except RuntimeError as exc:
        raise IndexDirError(f"{file}: not a FAISS index ({str(exc).strip().splitlines()[-1]})") from None
    kind = faiss.IndexIVFPQ if meta["search"]["backend"] == "ivfpq" else faiss.IndexFlatIP
    n, dim = meta["database_images"], meta["dim"]
    if not isinstance(index, kind) or index.ntotal != n or index.d != dim or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexDirError(f"{file}: a {type(index).__name__} of {index.ntotal} {index.d}-d vectors, expected an "
                            f"inner-product {kind.__name__} of {n} {dim}-d vectors (index.json)")  # fmt: skip
    return index


def _check_holds(file: Path, index: Any, descriptors: np.ndarray) -> None:
    """Sampled rows: unit-length finite descriptors, held by the FAISS index as they are (flat) or as their codes
    (IVF-PQ: the stored code of row i is the code of descriptors[i])."""
    import faiss

    rows = np.unique(np.linspace(0, len(descriptors) - 1, min(len(descriptors), SAMPLE_ROWS)).round().astype(np.int64))
    want = np.ascontiguousarray(descriptors[rows], dtype=np.float32)
    norms = np.linalg.norm(want, axis=1)
    if not np.isfinite(want).all() or not np.allclose(norms, 1, atol=1e-3):
        bad = rows[int(np.argmax(~np.isfinite(norms) | (np.abs(norms - 1) > 1e-3)))]
        raise IndexDirError(f"{file.with_name('descriptors.npy')}: row {bad} is not a finite L2-normalised descriptor")
    if isinstance(index, faiss.IndexIVFPQ):
        index.make_direct_map()
        want = index.sa_decode(index.sa_encode(want))
    held = np.stack([index.reconstruct(int(r)) for r in rows])
    differs = ~np.isclose(held, want, atol=1e-5).all(1)
    if differs.any():
        raise IndexDirError(f"{file}: does not hold the vectors of descriptors.npy ({int(differs.sum())} of {len(rows)} "
                            f"sampled rows differ, first row {rows[int(np.argmax(differs))]}): the two files come from "
                            "different builds; rebuild the index")  # fmt: skip


def open_index(path: Path) -> Index:
    """Open an index directory for searching; anything that is not what index.json says is an error naming the file."""
    path = Path(path)
    meta = read_meta(path)
    problems = verify_files(path, meta)
    if problems:
        raise IndexDirError(f"{path} is incomplete or corrupt: {'; '.join(problems)}")
    n, dim = meta["database_images"], meta["dim"]
    names = _names(path / "names.json", _whole(path, meta, "names.json"), n)
    utm = _array(path / "utm.npy", _whole(path, meta, "utm.npy"), "float64", (n, 2))
    offsets = None
    if meta["thumbnails"]:
        offsets = _array(path / "thumbnails.npy", _whole(path, meta, "thumbnails.npy"), "int64", (n + 1,))
        if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != meta["files"]["thumbnails.bin"]["size"]:
            raise IndexDirError(f"{path / 'thumbnails.npy'}: the offsets do not cut thumbnails.bin "
                                f"({meta['files']['thumbnails.bin']['size']} bytes) into {n} thumbnails")  # fmt: skip
    descriptors = _descriptors(path / "descriptors.npy", n, dim)
    index = _faiss(path / "faiss.index", meta)
    _check_holds(path / "faiss.index", index, descriptors)
    if meta["search"]["backend"] == "ivfpq":
        index.nprobe = meta["search"]["nprobe"]
    return Index(path, meta, descriptors, index, names, utm, offsets)


def check_model(meta: dict[str, Any], model: "VPRModel", index_path: Path) -> dict[str, Any] | None:
    """Refuse a model whose descriptors are not comparable with the index's: it must be the model that encoded the
    database, or a student whose checkpoint records that it was distilled from exactly that model (its lineage:
    the teacher's fingerprint), which then encodes the queries against its teacher's map. Returns that lineage
    (None for the index's own model)."""
    from loqi_core.plugin import checkpoint_lineage, model_fingerprint

    built = meta["model"]
    fingerprint = model_fingerprint(model)
    if fingerprint == built["fingerprint"]:
        return None
    lineage = checkpoint_lineage(str(model.info["weights"]))
    if lineage is not None and lineage["fingerprint"] == built["fingerprint"]:
        return lineage
    teacher = ("its checkpoint records no teacher" if lineage is None
               else f"it was distilled from another model (fingerprint {lineage['fingerprint']})")  # fmt: skip
    raise IndexDirError(
        f"{index_path} was built with {built['info']['method']} weights \"{built['weights']}\" (model fingerprint "
        f"{built['fingerprint']}), but the model to serve has weights \"{model.info['weights']}\" (fingerprint "
        f"{fingerprint}) and {teacher}: its descriptors would not be comparable. Serve the index's own model, a "
        f"student distilled from it, or build an index with this model: loqi index build --method "
        f"{built['info']['method']} --weights {model.info['weights']} --dataset {meta['dataset']} --out NEW_INDEX"
    )
