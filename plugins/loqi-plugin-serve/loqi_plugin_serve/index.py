"""An index directory: a database encoded once, searchable by a server that checks the model (its format, and
``index.json``, in ``loqi_plugin_serve.record``).

``build_index`` encodes a test set's database or any folder of images and writes the index whole into a hidden
sibling, renamed into place, replacing only an index (never a folder that is not one, never the images it reads).
``add_to_index`` appends a folder of images to an index without re-encoding what it holds, the same way: the new
index is written beside the old one, opened and checked as the server opens it, and only then takes its place.
``open_index`` refuses, in one line naming the file, anything that does not hold what ``index.json`` says: every
file's size; the sha256 of every file it reads whole (FAISS index, names, positions, capture order, thumbnail
offsets); the shape of every array; and, sampled, that the FAISS index holds the very vectors of ``descriptors.npy``.
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

from loqi_plugin_serve.geo import geo_of
from loqi_plugin_serve.record import FORMAT, FORMAT_VERSION, RECORD, IndexDirError, expected_files, read_meta, verify_files

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.plugin import ImageList, IVFPQParams, Plugins, RunConfig, VPRModel

THUMBNAIL_SIDE = 160
"""Longer side of the stored thumbnails, in pixels."""
ADD_CHUNK = 65536
"""Database rows added to a flat FAISS index at a time (the memory-mapped descriptors never load whole)."""
SAMPLE_ROWS = 64
"""Rows of descriptors.npy checked against the FAISS index when an index is opened."""
ORDERS = ("none", "name", "frame", "timestamp")
"""How a folder's images are put in capture order (``loqi_core``'s folder readers): not at all, by name, by the
frame index or the timestamp field of gmberton's names; one traverse per sub-folder."""


@dataclass
class Database:
    """Images to index: the list (paths, positions, capture order), their names in the index, and what they are."""

    images: "ImageList"
    names: list[str]
    source: str
    """What gave them, as a user passes it again: a dataset (``demo``, ``folder:/data/city``) or a folder."""
    built_from: str
    """``dataset`` (``--dataset``) or ``database`` (``--database``, a folder of images)."""
    title: str
    """The dataset's name, or the folder's."""
    root: Path
    """The folder holding every image the build reads (the index never goes there)."""


def _relative_names(paths: list[Path], root: Path | None = None) -> list[str]:
    """Each path relative to ``root`` (default: the folder all of them share, the dataset's database folder)."""
    if not paths:
        return []
    root = root or Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(root).as_posix() for p in paths]


def dataset_database(dataset: str, data_root: str | None, plugins: "Plugins") -> Database:
    """The database of a test set (``--dataset``)."""
    from loqi_core import load_dataset

    test = load_dataset(dataset, "test", root=data_root, plugins=plugins)
    images = test.database
    root = Path(os.path.commonpath([os.path.abspath(p.parent) for p in [*images.paths, *test.queries.paths]]))
    return Database(images, _relative_names(images.paths), dataset, "dataset", test.name, root)


def folder_database(folder: Path, order: str = "none") -> Database:
    """Every image under ``folder`` (``--database``): positions when their names carry ``@east@north@`` (all of them
    or none), in capture order when ``order`` says how to find it, named by their path under ``folder``."""
    from loqi_core.plugin import ConfigError, read_image_list

    if order not in ORDERS:
        raise ConfigError(f'--order: "{order}" is none of {", ".join(ORDERS)}')
    folder = Path(folder)
    images = read_image_list(folder, positions=None, order=order)  # type: ignore[arg-type]
    return Database(images, _relative_names(images.paths, folder), str(folder.resolve()), "database",
                    folder.resolve().name or "folder", folder)  # fmt: skip


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
    from PIL import Image

    from loqi_core.plugin import read_image

    img = Image.fromarray(read_image(path).permute(1, 2, 0).numpy())
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _write_thumbnails(paths: list[Path], folder: Path, before: Path | None = None) -> None:
    """thumbnails.bin and thumbnails.npy of ``paths`` in ``folder``, after those of the index ``before`` if given."""
    from loqi_core.plugin import progress

    offsets = [0]
    if before is not None:
        shutil.copyfile(before / "thumbnails.bin", folder / "thumbnails.bin")
        offsets = np.load(before / "thumbnails.npy").tolist()
    with open(folder / "thumbnails.bin", "ab") as f:
        for path in progress(paths, desc="thumbnails", unit="img", leave=False):
            blob = _thumbnail(path)
            f.write(blob)
            offsets.append(offsets[-1] + len(blob))
    np.save(folder / "thumbnails.npy", np.asarray(offsets, dtype=np.int64))


def _flat_index(database: np.ndarray):
    import faiss

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
    _only_the_format_s_files(out, meta, "--force replaces only a loqi index", "or choose another --out")


def _only_the_format_s_files(path: Path, meta: dict[str, Any], what: str, advice: str) -> None:
    own = {RECORD, *expected_files(meta["thumbnails"])}
    others = sorted(p.name for p in path.iterdir() if p.name not in own)
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise IndexDirError(f"{what}, and {path} also holds {listed}: move them away, {advice}")


def _check_not_the_input(out: Path, images: Path, flag: str = "--out") -> None:
    """``out`` neither is nor lies inside nor holds the folder of the images a build reads."""
    for resolve in (os.path.abspath, os.path.realpath):
        root = Path(resolve(images))
        target = Path(resolve(out))
        if target == root or root in target.parents or target in root.parents:
            raise IndexDirError(f"{flag} {out} {'is' if target == root else 'lies inside' if root in target.parents else 'holds'} "
                                f"the images it reads ({root}): the index goes elsewhere, images are never written")  # fmt: skip


def _capture_order(images: "ImageList", first: int) -> np.ndarray:
    """order.npy rows: (traverse, position in it) per image, traverses numbered from ``first``; (-1, -1) for an
    image of no traverse (a list without capture order)."""
    order = np.full((len(images), 2), -1, dtype=np.int64)
    for t, run in enumerate(images.sequences or []):
        order[np.asarray(run, dtype=np.int64)] = np.stack([np.full(len(run), first + t), np.arange(len(run))], 1)
    return order


def _encode(model: "VPRModel", images: "ImageList", degradation_spec: str, seed: int, config: "RunConfig",
            bf16: bool, device: Any, plugins: "Plugins", label: str) -> np.ndarray:  # fmt: skip
    """Descriptors of ``images`` through the evaluation engine's extraction and cache (the key ``loqi eval`` uses)."""
    from loqi_core import parse_degradation
    from loqi_core.plugin import EvalCache, extract, loader_workers, model_fingerprint, model_versions

    key = {"model": model_fingerprint(model), "code": model_versions(model, plugins), "precision": bf16}
    ev = config.eval
    return extract(
        model, images, parse_degradation(degradation_spec, plugins), cache=EvalCache(ev.cache_dir, enabled=ev.cache),
        key=key, seed=seed, device=device, batch_size=ev.batch_size,
        num_workers=loader_workers(ev.num_workers, device.type), precision="bf16" if bf16 else "fp32",
        cache_images=ev.cache_images, label=label, plugins=plugins,
    )  # fmt: skip


def _write_columns(tmp: Path, names: list[str], utm: np.ndarray, geo: np.ndarray, order: np.ndarray) -> None:
    (tmp / "names.json").write_text(json.dumps(names))
    np.save(tmp / "utm.npy", np.asarray(utm, dtype=np.float64))
    np.save(tmp / "geo.npy", np.asarray(geo, dtype=np.float64))
    np.save(tmp / "order.npy", np.asarray(order, dtype=np.int64))


def _seal(tmp: Path, meta: dict[str, Any]) -> None:
    """index.json with the size and sha256 of every file of the format, written last."""
    from loqi_core.plugin import sha256_of

    meta["files"] = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_of(tmp / name)}
                     for name in expected_files(meta["thumbnails"])}  # fmt: skip
    (tmp / RECORD).write_text(json.dumps(meta, indent=2, default=str))


def _install(tmp: Path, out: Path, recheck: Callable[[], None]) -> None:
    """Move the finished ``tmp`` to ``out``; an index already there (``recheck`` vouches for it again) is moved
    aside first and deleted last, so a kill at any moment leaves the old index or the new one whole."""
    from loqi_core.plugin import writer_tag

    if out.exists() or out.is_symlink():
        recheck()
        old = out.parent / f".{out.name}.replaced-{writer_tag()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def _scratch(out: Path, writer: str, echo: Callable[[str], None]) -> Path:
    """A fresh hidden sibling of ``out`` to write into; what killed writers (``writer``: of what kind, for the
    message) left beside ``out`` is removed first."""
    from loqi_core.plugin import remove_abandoned, writer_tag

    leftovers = glob.escape(f".{out.name}")
    for gone in remove_abandoned([*out.parent.glob(f"{leftovers}.partial-*"), *out.parent.glob(f"{leftovers}.replaced-*")]):
        echo(f"removed {gone}, left by {writer} that was killed")
    tmp = out.parent / f".{out.name}.partial-{writer_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _ivfpq_search(descriptors: np.ndarray, ivf: "IVFPQParams", seed: int) -> tuple[Any, dict[str, Any]]:
    from loqi_core.plugin import build_ivfpq, ivfpq_settings

    n, dim = descriptors.shape
    nlist, m_sub, nprobe = ivfpq_settings(n, dim, ivf)
    note = (f"approximate; the top {ivf.refine}·k re-ranked exactly from descriptors.npy" if ivf.refine
            else "approximate, no re-ranking")  # fmt: skip
    search = {"backend": "ivfpq", "nlist": nlist, "m": m_sub, "nprobe": nprobe, "refine": ivf.refine, "trained_on": n,
              "note": note}  # fmt: skip
    return build_ivfpq(descriptors, ivf, seed=seed), search


def build_index(
    config: "RunConfig",
    dataset: str | None,
    out: Path,
    *,
    database: Path | None = None,
    order: str = "none",
    utm_zone: tuple[int, str] | None = None,
    backend: str = "flat",
    ivf: "IVFPQParams | None" = None,
    thumbnails: bool = True,
    force: bool = False,
    plugins: "Plugins | None" = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Encode the database of ``dataset``, or every image under the folder ``database`` (in the capture ``order``
    given), with the configured model (via the eval cache) and write the index ``out``.

    ``utm_zone``: the zone of names that carry UTM east/north but no zone (latitude and longitude follow).
    ``force`` replaces an index already at ``out``, and only an index (recognised by its record, holding nothing
    else); what a killed build left beside ``out`` is removed first.
    """
    import faiss

    from loqi_core import parse_degradation
    from loqi_core.plugin import IVFPQParams, get_plugins, model_fingerprint, model_versions, resolve_device, use_bf16

    out = Path(out)
    if backend not in ("flat", "ivfpq"):
        raise IndexDirError(f'--index: unknown index type "{backend}" (flat, ivfpq)')
    if (dataset is None) == (database is None):
        raise IndexDirError("give the images to index: --dataset NAME (a test set's database) or --database FOLDER")
    _check_out(out, force)
    plugins = plugins or get_plugins()
    ivf = ivf or IVFPQParams()
    degradation = parse_degradation(config.degrade, plugins)
    db = dataset_database(dataset, config.data_root, plugins) if dataset is not None else folder_database(database, order)  # type: ignore[arg-type]
    _check_not_the_input(out, db.root)
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
    echo(f"encoding {len(db.images)} database images of {db.title} with {db_model.info['method']} "
         f"(weights {db_model.info['weights']}, {device}), degradation {degradation.spec or 'none'}")
    t0 = time.perf_counter()
    descriptors = _encode(db_model, db.images, degradation.spec or "none", config.seed, config, bf16, device, plugins,
                          f"{db.title} database")  # fmt: skip
    encode_s = time.perf_counter() - t0
    n, dim = descriptors.shape
    degraded = f"degraded with {degradation.spec}" if degradation.spec not in ("", "none") else "clean"
    tmp = _scratch(out, "a build", echo)
    try:
        shutil.copyfile(descriptors.filename, tmp / "descriptors.npy")
        t0 = time.perf_counter()
        if backend == "ivfpq":
            faiss_index, search = _ivfpq_search(descriptors, ivf, config.seed)
        else:
            faiss_index = _flat_index(descriptors)
            search = {"backend": "flat", "note": "exact inner product (FAISS flat); ties ranked by the lower database index"}
        faiss.write_index(faiss_index, str(tmp / "faiss.index"))
        index_s = time.perf_counter() - t0
        positions = db.images.positions if db.images.positions is not None else np.full((n, 2), np.nan)
        _write_columns(tmp, db.names, positions, geo_of(db.names, utm_zone), _capture_order(db.images, 0))
        if thumbnails:
            _write_thumbnails(db.images.paths, tmp)
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {**record, "weights": _weights_record(model), "fingerprint": fingerprint,
                      "info": model.info, "preprocess": model.preprocess.model_dump(mode="json")},
            "dataset": db.source, "dataset_name": db.title, "built_from": db.built_from, "database_images": n,
            "dim": dim, "degradation": degradation.spec or "none",
            "protocol": (f"database images {degraded} (seed {config.seed}) and encoded by "
                         + ("the model above" if db_model is model else "database_model (weights other than the model's)")
                         + "; queries are encoded by the model above at serve time; score = inner product of "
                         "L2-normalised descriptors, distance = sqrt(2 - 2*score)"),
            **({} if db_model is model else {"database_model": {"weights": _weights_record(db_model), "fingerprint": db_fingerprint}}),
            "precision": "bf16 autocast" if bf16 else "fp32",
            "search": search,
            "utm_zone": f"{utm_zone[0]}{utm_zone[1]}" if utm_zone else None,
            "versions": model_versions(model, plugins),
            "thumbnails": thumbnails,
            "additions": [],
            "timings_s": {"encode": round(encode_s, 3), "index": round(index_s, 3)},
        }  # fmt: skip
        _seal(tmp, meta)
        _install(tmp, out, lambda: _check_out(out, force))  # checked again: it may have changed during the encoding
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _database_model_of(meta: dict[str, Any], record: dict[str, Any], plugins: "Plugins", path: Path) -> "VPRModel":
    """The model that encoded the index's database when it is not the query model, checked by its fingerprint."""
    from loqi_core.plugin import model_fingerprint

    want = meta["database_model"]
    model = build_model_from(record, want["weights"], plugins)
    if model_fingerprint(model) != want["fingerprint"]:
        raise IndexDirError(f"{path}: its database was encoded by weights {want['weights']} that no longer give the same "
                            "model (changed on disk?); rebuild the index")  # fmt: skip
    return model


def add_to_index(
    path: Path,
    folder: Path,
    config: "RunConfig",
    *,
    order: str = "none",
    utm_zone: tuple[int, str] | None = None,
    plugins: "Plugins | None" = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Append every image under ``folder`` to the index at ``path`` without re-encoding what it holds.

    The index is verified first (every sha256, and opened as the server opens it); the new images are encoded with
    the index's own model, degradation, seed and precision; the new index is written beside the old one, opened
    and checked, and only then takes its place. A flat index gets the new vectors; an IVF-PQ index gets their
    codes, or is trained again when the database has more than doubled since it was trained. ``utm_zone``: as in
    ``build_index``, for the new names only (``config`` gives the device, batch size and cache)."""
    import faiss

    from loqi_core.plugin import IVFPQParams, get_plugins, model_versions, resolve_device, use_bf16

    path = Path(path)
    plugins = plugins or get_plugins()
    meta = read_meta(path)
    problems = verify_files(path, meta, full=True)
    if problems:
        raise IndexDirError(f"{path} is incomplete or corrupt, nothing was added: {'; '.join(problems)}")
    _only_the_format_s_files(path, meta, "loqi index add rewrites the whole index folder", "then add again")
    old = open_index(path)
    db = folder_database(folder, order)
    _check_not_the_input(path, db.root, "INDEX")
    taken = set(old.names)
    twice = next((name for name in db.names if name in taken), None)
    if twice is not None:
        raise IndexDirError(f"{Path(folder) / twice}: the index already holds an image named {twice!r} (added twice?); "
                            "rename it or leave it out")  # fmt: skip
    record = meta["model"]
    model = build_model_from(record, record["weights"], plugins)
    check_model(meta, model, path)
    device = resolve_device(config.device)
    bf16 = meta["precision"] == "bf16 autocast"
    if bf16 != use_bf16("bf16" if bf16 else "fp32", device):
        raise IndexDirError(f"{path} was encoded with bf16 autocast on CUDA; add to it on a CUDA device (--device cuda)")
    if "database_model" in meta:  # the map was encoded by other weights (--database-weights): so are its additions
        model = _database_model_of(meta, record, plugins, path)
    model = model.to(device).eval()
    echo(f"encoding {len(db.images)} new images of {db.title} with {model.info['method']} ({device}), degradation "
         f"{meta['degradation']}; the {old.size} images of {path} are not encoded again")  # fmt: skip
    added = _encode(model, db.images, meta["degradation"], record["seed"], config, bf16, device, plugins,
                    f"{db.title} (added)")  # fmt: skip
    n_old, n_new = old.size, len(db.images)
    tmp = _scratch(path, "a build or an index add", echo)
    try:
        descriptors = np.lib.format.open_memmap(tmp / "descriptors.npy", "w+", np.float32, (n_old + n_new, meta["dim"]))
        for d0 in range(0, n_old, ADD_CHUNK):
            descriptors[d0 : min(n_old, d0 + ADD_CHUNK)] = old.descriptors[d0 : d0 + ADD_CHUNK]
        for d0 in range(0, n_new, ADD_CHUNK):
            descriptors[n_old + d0 : n_old + min(n_new, d0 + ADD_CHUNK)] = added[d0 : d0 + ADD_CHUNK]
        descriptors.flush()
        search = dict(meta["search"])
        if search["backend"] == "flat":
            faiss_index = _flat_index(descriptors)
        elif n_old + n_new > 2 * search["trained_on"]:
            echo(f"the database more than doubled since the IVF-PQ index was trained on {search['trained_on']} "
                 "images: training it again")  # fmt: skip
            faiss_index, search = _ivfpq_search(descriptors, IVFPQParams(m=search["m"], refine=search["refine"]),
                                                record["seed"])  # fmt: skip
        else:
            faiss_index = faiss.clone_index(old.faiss_index)
            for d0 in range(0, n_new, ADD_CHUNK):
                faiss_index.add(np.ascontiguousarray(added[d0 : d0 + ADD_CHUNK], dtype=np.float32))
        faiss.write_index(faiss_index, str(tmp / "faiss.index"))
        positions = db.images.positions if db.images.positions is not None else np.full((n_new, 2), np.nan)
        first = int(old.order[:, 0].max()) + 1  # the new traverses follow the index's (-1: it has none)
        _write_columns(tmp, [*old.names, *db.names], np.concatenate([old.utm, positions]),
                       np.concatenate([old.geo, geo_of(db.names, utm_zone)]),
                       np.concatenate([old.order, _capture_order(db.images, first)]))  # fmt: skip
        if meta["thumbnails"]:
            _write_thumbnails(db.images.paths, tmp, before=path)
        addition = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "folder": db.source, "images": n_new,
                    "first": n_old, "order": order, "utm_zone": f"{utm_zone[0]}{utm_zone[1]}" if utm_zone else None,
                    "versions": model_versions(model, plugins)}  # fmt: skip
        meta = {**meta, "database_images": n_old + n_new, "search": search, "additions": [*meta["additions"], addition]}
        _seal(tmp, meta)
        open_index(tmp)  # verified like a build: every file, shape and the FAISS index against the descriptors

        def unchanged() -> None:
            if read_meta(path)["files"] != old.meta["files"]:
                raise IndexDirError(f"{path} changed while the new images were encoded; nothing was added: add again")

        _install(tmp, path, unchanged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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
    geo: np.ndarray
    """N×3: latitude, longitude, UTM zone number (NaN where unknown)."""
    order: np.ndarray
    """N×2: traverse and position in it, in capture order ((-1, -1): no order)."""

    @property
    def size(self) -> int:
        return len(self.names)

    def traverses(self) -> list[list[int]] | None:
        """The database's capture order as ``ImageList.sequences`` gives it (runs of indices, each in capture
        order), None when no image has one."""
        ordered = np.flatnonzero(self.order[:, 0] >= 0)
        if not len(ordered):
            return None
        rows = ordered[np.lexsort((self.order[ordered, 1], self.order[ordered, 0]))]
        cuts = np.flatnonzero(np.diff(self.order[rows, 0])) + 1
        return [run.tolist() for run in np.split(rows, cuts)]

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


def _capture(file: Path, order: np.ndarray) -> np.ndarray:
    """order.npy as a capture order: (-1, -1) or a traverse ≥ 0 whose positions are exactly 0, 1, ... in some order."""
    none = order[:, 0] < 0
    if (order[none] != -1).any() or (order[~none, 1] < 0).any():
        raise IndexDirError(f"{file}: a row is neither (-1, -1) nor a traverse and a position")
    rows = order[~none][np.lexsort((order[~none, 1], order[~none, 0]))]
    starts = np.r_[True, np.diff(rows[:, 0]) != 0] if len(rows) else np.zeros(0, bool)
    expected = np.arange(len(rows)) - np.maximum.accumulate(np.where(starts, np.arange(len(rows)), 0))
    if not np.array_equal(rows[:, 1], expected):
        raise IndexDirError(f"{file}: the positions of a traverse are not 0, 1, 2, ... (each once)")
    return order


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
    geo = _array(path / "geo.npy", _whole(path, meta, "geo.npy"), "float64", (n, 3))
    order = _capture(path / "order.npy", _array(path / "order.npy", _whole(path, meta, "order.npy"), "int64", (n, 2)))
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
    return Index(path, meta, descriptors, index, names, utm, offsets, geo, order)


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
