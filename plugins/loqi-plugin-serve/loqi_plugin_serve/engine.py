"""The model and the index loaded once, checked to match; ``locate`` turns a batch of images into ranked places."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loqi_plugin_serve.geo import name_position, parse_zone, zone_label
from loqi_plugin_serve.index import Index, build_model_from, check_model, open_index

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.plugin import VPRModel


def printable(name: str) -> str:
    """A file name as text a JSON answer can carry: bytes of the name that were not UTF-8 shown as \\xNN."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


class Engine:
    """Encodes images with the index's model, or with a student distilled from it (``lineage``: the teacher it
    records), and searches the index."""

    def __init__(self, index: Index, model: "VPRModel", device: "torch.device", bf16: bool,
                 lineage: dict[str, Any] | None = None) -> None:  # fmt: skip
        from loqi_core.plugin import model_fingerprint

        self.index, self.model, self.device, self.bf16 = index, model.to(device).eval(), device, bf16
        self.lineage = lineage
        self.fingerprint = model_fingerprint(self.model)
        zone = index.meta["utm_zone"]
        self.utm_zone = parse_zone(zone, "index.json utm_zone") if zone else None

    def locate(self, images: list["torch.Tensor"], ks: list[int], descriptors: bool = False) -> tuple[list[Any], dict[str, float]]:
        """One result list per image (best first, its own k), and the batch's model and search time in ms; with
        ``descriptors``, each image's ``(results, descriptor)``."""
        from loqi_core.plugin import encode_batch

        t0 = time.perf_counter()
        desc = np.empty((len(images), self.index.descriptors.shape[1]), dtype=np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):  # images of one size share a forward pass
            by_shape.setdefault(tuple(img.shape), []).append(i)
        for rows in by_shape.values():
            desc[rows] = encode_batch(self.model, [images[i] for i in rows], self.device, self.bf16)
        t1 = time.perf_counter()
        results: list[list[dict[str, Any]]] = [[] for _ in images]
        for k in sorted(set(ks)):
            rows = [i for i, ki in enumerate(ks) if ki == k]
            idx, scores = self.index.search(desc[rows], k)
            for row, ids, ss in zip(rows, idx, scores):
                results[row] = self.rows(ids, ss)
        t2 = time.perf_counter()
        timings = {"model_ms": (t1 - t0) * 1000, "search_ms": (t2 - t1) * 1000}
        return (list(zip(results, desc)) if descriptors else results), timings

    def similarity(self, descriptor: np.ndarray) -> np.ndarray:
        """Inner products of one query descriptor with every database descriptor (database order), as the offline
        sequence matching computes them (``similarity_matrix``, float64): the row a session's stream takes."""
        from loqi_core.plugin import similarity_matrix

        return similarity_matrix(np.asarray(descriptor)[None], self.index.descriptors)[0]

    def query_place(self, name: str | None) -> dict[str, Any] | None:
        """Where an uploaded frame was taken, when its file name carries a position (gmberton's names), else None."""
        if not name:
            return None
        return name_position(name, self.utm_zone)

    def place(self, i: int) -> dict[str, Any]:
        """Database image ``i``: its name and position (UTM east/north, latitude/longitude, UTM zone; None where
        unknown)."""
        east, north = (float(v) for v in self.index.utm[i])
        lat, lon, zone = (float(v) for v in self.index.geo[i])
        return {
            "index": i, "name": printable(self.index.names[i]),
            "utm_east": None if math.isnan(east) else east, "utm_north": None if math.isnan(north) else north,
            "utm_zone": zone_label(lat, zone), "lat": None if math.isnan(lat) else lat,
            "lon": None if math.isnan(lon) else lon,
        }  # fmt: skip

    def rows(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist()), 1):
            if i < 0:  # the database has fewer than k images
                break
            out.append({"rank": rank, **self.place(i), "score": s, "distance": math.sqrt(max(0.0, 2.0 - 2.0 * s))})
        return out

    def sequence_rows(self, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """A session's sequence answer: rank, place and ``sequence_score`` (lower is better)."""
        return [{"rank": rank, **self.place(i), "sequence_score": s}
                for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist()), 1) if i >= 0]  # fmt: skip


def with_errors(results: list[dict[str, Any]], query: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each result with ``error_m``, its UTM distance in metres from the query's position, where both are known
    (and not known to lie in different zones)."""
    if query is None:
        return results
    out = []
    for r in results:
        known = None not in (r["utm_east"], r["utm_north"]) and (r["utm_zone"] is None or query["utm_zone"] is None
                                                                 or r["utm_zone"][:-1] == query["utm_zone"][:-1])  # fmt: skip
        error = math.hypot(r["utm_east"] - query["utm_east"], r["utm_north"] - query["utm_north"]) if known else None
        out.append({**r, "error_m": error})
    return out


def load_engine(index_path: Path, weights: str | None = None, device: str = "auto", precision: str = "auto") -> Engine:
    """Open the index, rebuild its model (or load ``weights`` into it: the index's own, or a student distilled
    from the index's model) and refuse a model whose descriptors are not comparable."""
    from loqi_core.plugin import get_plugins, resolve_device, use_bf16

    index = open_index(index_path)
    record = index.meta["model"]
    model = build_model_from(record, weights or record["weights"], get_plugins())
    lineage = check_model(index.meta, model, index_path)
    dev = resolve_device(device)
    return Engine(index, model, dev, use_bf16(precision, dev), lineage)
