"""The evaluation engine: degrade → encode → search → recall@N, with the protocol recorded next to the numbers.

Protocol (the paper's, unless ``clean_database``): the database AND the queries are degraded and both are
encoded by the model under test; a database image is a positive when it lies within ``positive_radius``
metres of the query (or the dataset gives its ground truth explicitly); a query without any positive counts
as a miss; recall@N is the percentage of all queries with a positive among the top N. A test set without
positions or ground truth (label-free) gets its predictions and descriptors but no recall.

Temporal degradations (video codecs) receive each capture-order sequence of an image list as one stream;
an image list without order is encoded one image per stream. Degraded images and descriptors are cached
(``loqi_core.evaluation.cache``), so a second evaluation of the same model on the same data costs only the search.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from loqi_core.config import EvalConfig
from loqi_core.data.images import ImageTooLargeError, UnreadableImageError, read_image
from loqi_core.data.sets import ImageList, TestSet
from loqi_core.degrade.base import Degradation, Identity, degradation_units, sample_seed, temporal_note
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.errors import ConfigError, ModelOutputError
from loqi_core.evaluation.cache import (
    SHARD_FORMAT,
    DescriptorWriter,
    EvalCache,
    image_list_fingerprint,
    load_descriptors,
    model_fingerprint,
    read_shard,
    sidecar_of,
    write_shard,
)
from loqi_core.evaluation.results import EvalResult
from loqi_core.evaluation.search import IVFPQParams, NonFiniteDescriptorsError, recall_at_n, resolve_backend, search
from loqi_core.evaluation.sequence import match_sequences, traverses_of
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.models.preprocess import preprocess_sizes
from loqi_core.util.cpus import loader_workers
from loqi_core.util.devices import resolve_device
from loqi_core.util.sources import code_version
from loqi_core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.hooks.specs import Preprocess
    from loqi_core.models.model import VPRModel

log = logging.getLogger("loqi.evaluate")

MAX_ENLARGED_PIXELS = 2**24
"""What the model's preprocessing may enlarge an image to (16.8 M pixels, 200 MB as float32 RGB): beyond it, a
20000×1 strip that lite0's short side of 128 would make 128×2,560,000 is refused instead of exhausting memory. An
image preprocessed at its own size or smaller is never refused for it."""
LABEL_FREE = "the database or the queries carry no positions (no @east@north@ in their names): recall needs positions"

SHARD_SIZE = 64
"""Images per degraded-image cache shard (whole sequences are never split across shards)."""


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU thread count when given; returns the count in effect (recorded in every run's config.json,
    since the same seed gives the same numbers only at the same thread count)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def use_bf16(precision: str, device: "torch.device") -> bool:
    """bf16 autocast on CUDA unless fp32 is asked for; CPUs run fp32 unless bf16 is asked for."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


# ---- degradation units and shards ----------------------------------------------------------------


def _temporal_both(test: TestSet, db_deg: Degradation, q_deg: Degradation) -> str:
    db, q = temporal_note(test.database, db_deg), temporal_note(test.queries, q_deg)
    return q if db == q else f"database: {db}; queries: {q}"


def _shards(units: list[list[int]], size: int) -> list[list[list[int]]]:
    shards, current, count = [], [], 0
    for unit in units:
        current.append(unit)
        count += len(unit)
        if count >= size:
            shards.append(current)
            current, count = [], 0
    if current:
        shards.append(current)
    return shards


class _ShardDataset:
    """Item ``i`` = shard ``i``: read from the image cache if intact, else read, degrade and (maybe) cache it."""

    def __init__(self, images: ImageList, degradation: Degradation, seed: int, folder: Path | None) -> None:
        self.paths = images.paths
        self.degradation = degradation
        self.seed = seed
        self.folder = folder
        self.shards = _shards(degradation_units(images, degradation), SHARD_SIZE)

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> tuple[list[int], list["torch.Tensor"], str]:
        path = self.folder / f"shard_{i:05d}.bin" if self.folder is not None else None
        if path is not None:
            existed = path.exists()
            cached = read_shard(path)
            if cached is not None and cached[0] == [j for unit in self.shards[i] for j in unit]:
                return cached[0], cached[1], "hit"
        indices, images, nbytes = [], [], []
        for unit in self.shards[i]:
            try:
                clean = [read_image(self.paths[j]) for j in unit]
            except UnreadableImageError as exc:  # handed to the main process as a value: no worker traceback
                return [], [], exc
            out = self.degradation(clean, seed=sample_seed(self.seed, self.paths[unit[0]].name))
            if len(out.images) != len(unit):
                raise RuntimeError(f'degradation "{self.degradation.spec}" returned {len(out.images)} images for {len(unit)}')
            indices += unit
            images += out.images
            nbytes += out.nbytes if out.nbytes is not None else [None] * len(unit)
        if path is not None:
            write_shard(path, images, None if None in nbytes else nbytes, indices)
            return indices, _one_buffer(images), "rebuilt" if existed else "miss"
        return indices, _one_buffer(images), "uncached"


class EnlargedTooFarError(ImageTooLargeError):
    """An image the model's preprocessing would enlarge past ``MAX_ENLARGED_PIXELS``; found once decoded and
    degraded, so ``skip_bad`` leaves out that file alone."""


def check_enlargement(image: "torch.Tensor", pp: "Preprocess", path: Path) -> None:
    """Refuse an image (3×H×W, as the model gets it) that ``pp`` would enlarge past ``MAX_ENLARGED_PIXELS``."""
    height, width = image.shape[-2:]
    peak_h, peak_w = max(preprocess_sizes(height, width, pp), key=lambda s: s[0] * s[1])
    if peak_h * peak_w > max(height * width, MAX_ENLARGED_PIXELS):
        raise EnlargedTooFarError(f"cannot encode image {path}: it is {width}×{height}, and the model's preprocessing "
                                  f"would enlarge it to {peak_w}×{peak_h} = {peak_w * peak_h:,} pixels "
                                  f"({peak_w * peak_h * 12 / 2**30:.1f} GB as float32), more than {MAX_ENLARGED_PIXELS:,}: "
                                  "crop it to the scene", path)  # fmt: skip


def _one_buffer(images: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """In a DataLoader worker, the images as views into one buffer: the shard then crosses to the main process
    as one shared-memory block, not one per image (measured: about 6× less main-process time per image)."""
    import torch
    from torch.utils.data import get_worker_info

    if get_worker_info() is None or not images:
        return images
    buffer = torch.cat([img.reshape(-1) for img in images])
    offsets = np.cumsum([0] + [img.numel() for img in images]).tolist()
    return [buffer[offsets[k] : offsets[k + 1]].view(img.shape) for k, img in enumerate(images)]


def _identity_collate(item: Any) -> Any:
    return item


# ---- scale-out under torchrun ---------------------------------------------------------------------


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the torchrun job this process belongs to; (0, 1) when alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank of a torchrun job; nothing when alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def extraction_blocks(shards: list[list[list[int]]], batch_size: int) -> list[list[int]]:
    """Consecutive shard ids grouped into blocks of at least ``SHARD_SIZE·k`` images, ``k`` the smallest with
    ``SHARD_SIZE·k`` a multiple of ``batch_size``. A batch never spans two blocks, so the batches (and thus the
    descriptors, bit for bit) do not depend on how many ranks share the blocks."""
    images = SHARD_SIZE * batch_size // math.gcd(SHARD_SIZE, batch_size)
    blocks: list[list[int]] = [[]]
    count = 0
    for i, shard in enumerate(shards):
        if count >= images:
            blocks.append([])
            count = 0
        blocks[-1].append(i)
        count += sum(len(u) for u in shard)
    return [b for b in blocks if b]


def _merge_rank_parts(desc_path: Path, n: int, world: int, meta: dict[str, Any]) -> np.ndarray:
    """Rank 0: every rank's descriptor rows (``descriptors.rankR.npy`` + their row indices) into one sealed file."""
    writer: DescriptorWriter | None = None
    for r in range(world):
        part, rows = _rank_part(desc_path, r)
        if not part.exists():
            continue  # a rank with no block (more ranks than blocks)
        values = np.load(part, mmap_mode="r")
        writer = writer or DescriptorWriter(desc_path, n, values.shape[1])
        writer.write(np.load(rows), values)
        del values
        part.unlink()
        rows.unlink()
        sidecar_of(part).unlink(missing_ok=True)
    if writer is None:
        raise RuntimeError(f"no rank encoded any image for {desc_path}")
    return writer.close(meta)


def _rank_part(desc_path: Path, rank: int) -> tuple[Path, Path]:
    return desc_path.with_name(f"descriptors.rank{rank}.npy"), desc_path.with_name(f"rows.rank{rank}.npy")


# ---- extraction ----------------------------------------------------------------------------------


@dataclass
class ExtractStats:
    """What one extraction did: images, seconds, and whether caches answered."""

    images: int = 0
    seconds: float = 0.0
    descriptors_cached: bool = False
    image_shards: dict[str, int] = field(default_factory=dict)


def _fixed_size(model: "VPRModel") -> bool:
    pp = model.preprocess
    return pp.size is not None and pp.mode in ("resize", "center_crop")


def encode_batch(model: "VPRModel", images: Sequence["torch.Tensor"], device: "torch.device", bf16: bool) -> np.ndarray:
    """uint8 images (one shape, or any shapes with a fixed input size) → float32 L2-normalised descriptors, one
    finite row per image (every path that encodes comes here: evaluate, encode, index build, serve)."""
    return _PendingBatch(model, images, device, bf16).result()


class _PendingBatch:
    """One batch launched on the device, its descriptors on their way to the host: on CUDA nothing waits until
    ``result()``, so extraction prepares and launches the next batch while this one runs."""

    def __init__(self, model: "VPRModel", images: Sequence["torch.Tensor"], device: "torch.device", bf16: bool) -> None:
        import torch
        import torch.nn.functional as F

        same = len({tuple(img.shape) for img in images}) == 1
        batch: Any = list(images)
        if same:  # on CUDA stacked straight into pinned memory, so the copy to the device runs asynchronously
            pinned = device.type == "cuda"
            batch = torch.stack(batch, out=torch.empty((len(batch), *batch[0].shape), dtype=batch[0].dtype, pin_memory=pinned))
        self.name, self.n = model.info.get("method", type(model).__name__), len(images)
        with torch.inference_mode():
            x = model.prepare(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                _, desc = model(x)
            if not isinstance(desc, torch.Tensor) or desc.dim() != 2 or len(desc) != self.n:
                got = f"a {type(desc).__name__}" if not isinstance(desc, torch.Tensor) else f"shape {tuple(desc.shape)}"
                raise ModelOutputError(f'model "{self.name}" returned descriptors of {got} for {self.n} images: expected '
                                       f"a tensor {self.n}×D (one row per image; a wrapped module returns B×D or a "
                                       "(latent, descriptor) tuple)")  # fmt: skip
            desc = F.normalize(desc.float(), dim=1)
            self.done = None
            if device.type == "cuda":
                self.host = torch.empty(desc.shape, dtype=desc.dtype, pin_memory=True)
                self.host.copy_(desc, non_blocking=True)
                self.done = torch.cuda.Event()
                self.done.record()
            else:
                self.host = desc.cpu()

    def result(self) -> np.ndarray:
        """The descriptors on the host, refused when a row is not finite."""
        if self.done is not None:
            self.done.synchronize()
        out = self.host.numpy()
        bad = ~np.isfinite(out).all(1)
        if bad.any():
            raise NonFiniteDescriptorsError(f'model "{self.name}" returned NaN or Inf descriptors for {int(bad.sum())} of '
                                            f"{self.n} images of a batch: its weights or inputs are not finite "
                                            "(a diverged checkpoint?)")  # fmt: skip
        return out


def extract(
    model: "VPRModel",
    images: ImageList,
    degradation: Degradation,
    *,
    cache: EvalCache,
    key: dict[str, Any],
    seed: int = 0,
    device: "torch.device | None" = None,
    batch_size: int = 32,
    num_workers: int = 0,
    precision: str = "auto",
    cache_images: bool = True,
    label: str = "extract",
    stats: ExtractStats | None = None,
    plugins: Plugins | None = None,
) -> np.ndarray:
    """Descriptors (N×D float32, a read-only memory map) of ``images`` after ``degradation``, via the cache.

    ``key`` identifies the model and code (see ``evaluate``); the image list and degradation are added here.
    Images of different sizes are batched separately (unless the model resizes to a fixed size).
    """
    from torch.utils.data import DataLoader

    from loqi_core.util.progress import progress

    stats = stats if stats is not None else ExtractStats()
    device = device or resolve_device()
    start = time.perf_counter()
    images_key = {"images": image_list_fingerprint(images), "degrade": degradation.spec or "none", "seed": seed,
                  "temporal_units": degradation.temporal and images.sequences is not None,
                  "code": degradation_versions(degradation, plugins or get_plugins())}
    desc_path = cache.entry("descriptors", {**images_key, **key}) / "descriptors.npy"
    if cache.lookup(desc_path) is not None:
        stats.descriptors_cached = True
        return load_descriptors(desc_path)
    folder = None
    if cache_images and cache.enabled and not isinstance(degradation, Identity):
        folder = cache.entry("images", {**images_key, "format": SHARD_FORMAT})
    dataset = _ShardDataset(images, degradation, seed, folder)
    rank, world = dist_rank_world()
    if world > 1 and not cache.enabled:
        raise ConfigError("under torchrun the ranks hand their descriptors over through the evaluation cache: keep "
                          "eval.cache on (on several nodes, eval.cache_dir must be a folder every node shares)")  # fmt: skip
    blocks = extraction_blocks(dataset.shards, batch_size)
    mine = [s for block in blocks[rank::world] for s in block]  # under torchrun: every world-th block
    block_of = {s: b for b, block in enumerate(blocks) for s in block}
    rows = sorted(i for s in mine for unit in dataset.shards[s] for i in unit)
    local = {i: k for k, i in enumerate(rows)} if world > 1 else None
    loader = DataLoader(dataset, batch_size=None, sampler=mine, num_workers=num_workers, collate_fn=_identity_collate,
                        persistent_workers=False, prefetch_factor=2 if num_workers else None)
    bf16 = use_bf16(precision, device)
    fixed = _fixed_size(model)
    writer: DescriptorWriter | None = None
    buckets: dict[Any, list[tuple[int, "torch.Tensor"]]] = {}
    pending: list[tuple[list[int], _PendingBatch]] = []  # launched, descriptors not yet written (at most one)
    part, part_rows = _rank_part(desc_path, rank)

    def flush(bucket_key: Any) -> None:
        items = buckets.pop(bucket_key)
        pending.append(([local[i] if local else i for i, _ in items], _PendingBatch(model, [img for _, img in items], device, bf16)))
        if len(pending) > 1:
            write_pending()

    def write_pending() -> None:
        nonlocal writer
        batch_rows, batch = pending.pop(0)
        desc = batch.result()
        if writer is None:
            writer = DescriptorWriter(part, len(rows), desc.shape[1]) if local else DescriptorWriter(desc_path, len(images), desc.shape[1])
        writer.write(batch_rows, desc)
        stats.images += len(batch_rows)

    model.eval()
    try:
        with progress(total=len(rows), desc=label if world == 1 else f"{label} (rank {rank}/{world})", unit="img", leave=False) as bar:
            previous = None
            for shard, (indices, imgs, status) in zip(mine, loader):
                if isinstance(status, UnreadableImageError):
                    raise status
                if block_of[shard] != previous:
                    for bucket_key in list(buckets):  # a batch never spans two blocks
                        flush(bucket_key)
                    previous = block_of[shard]
                stats.image_shards[status] = stats.image_shards.get(status, 0) + 1
                for i, img in zip(indices, imgs):
                    check_enlargement(img, model.preprocess, images.paths[i])
                    bucket_key = "fixed" if fixed else tuple(img.shape)
                    buckets.setdefault(bucket_key, []).append((i, img))
                    if len(buckets[bucket_key]) >= batch_size:
                        flush(bucket_key)
                    elif sum(len(b) for b in buckets.values()) > 4 * batch_size:
                        flush(max(buckets, key=lambda b: len(buckets[b])))
                bar.update(len(indices))
            for bucket_key in list(buckets):
                flush(bucket_key)
            while pending:
                write_pending()
        meta = {"images": len(images)}
        if local is None:
            if writer is None:
                raise RuntimeError(f"no images to encode in {label}")
            result = writer.close(meta)
        else:  # each rank seals its part; rank 0 merges them into the one cached file every rank then reads
            if writer is not None:
                writer.close({"images": len(rows), "rank": rank})
                np.save(part_rows, np.asarray(rows, dtype=np.int64))
            barrier()
            if rank == 0:
                _merge_rank_parts(desc_path, len(images), world, meta)
            barrier()
            result = load_descriptors(desc_path)
    except BaseException:
        if writer is not None:  # a failure (full disk, Ctrl-C, a bad image) leaves no *.partial.npy behind
            writer.abort()
        raise
    stats.seconds += time.perf_counter() - start
    return result


# ---- evaluation ----------------------------------------------------------------------------------


def model_versions(model: "VPRModel", plugins: Plugins) -> dict[str, str]:
    """Code versions (version + source digest) of loqi-core and of the plugins that provide the model's parts."""
    out = {"loqi-core": code_version(__version__, ["loqi_core"])}
    for registry, name in ((plugins.encoders, model.info.get("encoder")), (plugins.aggregators, model.info.get("aggregator"))):
        if name in registry:
            p = registry.provider(name)
            out[p.dist] = plugins.code_version(p)
    return out


def descriptor_key(model: "VPRModel", precision: str, device: "torch.device", plugins: Plugins) -> dict[str, Any]:
    """What cached descriptors depend on besides the images: the model (weights, parts, preprocessing), the code
    versions and the precision (``extract``'s ``key``; ``evaluate`` and ``loqi_core.encode`` share entries)."""
    return {"model": model_fingerprint(model), "code": model_versions(model, plugins), "precision": use_bf16(precision, device)}


def degradation_versions(degradation: Degradation, plugins: Plugins) -> dict[str, str]:
    """Code versions (version + source digest) of loqi-core and of the plugins whose grammars the spec's tokens match."""
    out = {"loqi-core": code_version(__version__, ["loqi_core"])}
    for token in (degradation.spec or "").split("+"):
        for _, dspec, provider in plugins.degradations.items():
            if token and re.fullmatch(dspec.pattern, token):
                out[provider.dist] = plugins.code_version(provider)
    return out


def describe_protocol(protocol: dict[str, Any]) -> str:
    """The protocol as a few human-readable lines (printed before the numbers and saved with them)."""
    lines = [
        f"database: {protocol['database']}; queries: {protocol['queries']}; {protocol['encoder']}",
        f"positives: {protocol['positives']}; queries without a positive: {protocol['queries_without_positives']}",
        (f"recall@N for N in {protocol['recall_at']} (percent of all queries)" if protocol.get("labelled", True)
         else "no recall (label-free)") + f"; search: {protocol['search']}; ties: {protocol['ties']}",
        f"degradation: {protocol['degradation']} (seed {protocol['seed']}); {protocol['temporal']}",
        f"weights: {protocol['weights']}; precision: {protocol['precision']}",
    ]
    if protocol.get("sequence"):
        lines.append(f"sequence matching: {protocol['sequence']}")
    if protocol.get("untrained"):
        lines.insert(0, "UNTRAINED MODEL (--weights random): these numbers measure nothing but the pipeline")
    return "\n".join(lines)


def evaluate(
    model: "VPRModel",
    test: TestSet,
    degradation: str | Degradation = "none",
    *,
    config: EvalConfig | None = None,
    clean_database: bool | None = None,
    seed: int = 0,
    device: "str | torch.device | None" = "auto",
    cache: EvalCache | None = None,
    plugins: Plugins | None = None,
    untrained: bool | None = None,
    stats: dict[str, ExtractStats] | None = None,
    database_model: "VPRModel | None" = None,
) -> EvalResult | None:
    """Recall@N of ``model`` on ``test`` with database and queries degraded (the paper's protocol).

    ``database_model``: encode the database with this model instead (asymmetric evaluation: a student's queries
    against the map its teacher indexed). Under torchrun every rank encodes its share of the images; rank 0
    searches and returns the result, the other ranks return None.
    """
    import torch

    config = config or EvalConfig()
    plugins = plugins or get_plugins()
    cache = cache or EvalCache(config.cache_dir, enabled=config.cache)
    clean_database = config.clean_database if clean_database is None else clean_database
    deg = parse_degradation(degradation, plugins) if isinstance(degradation, str) else degradation
    db_deg: Degradation = Identity() if clean_database else deg
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if config.sequence:
        traverses_of(test)  # a test set without capture order is refused before anything is encoded
    model = model.to(device).eval()
    db_model = model if database_model is None else database_model.to(device).eval()
    keys = {m: descriptor_key(m, config.precision, device, plugins) for m in (model, db_model)}
    stats = stats if stats is not None else {}
    common = dict(cache=cache, seed=seed, device=device, batch_size=config.batch_size,
                  num_workers=loader_workers(config.num_workers, device.type), precision=config.precision, cache_images=config.cache_images,
                  plugins=plugins)
    stats["database"], stats["queries"] = ExtractStats(), ExtractStats()
    db_args = dict(label=f"{test.name} database", stats=stats["database"], key=keys[db_model], **common)
    q_args = dict(label=f"{test.name} queries", stats=stats["queries"], key=keys[model], **common)
    decoded_all = False
    while True:
        try:
            db = extract(db_model, test.database, db_deg, **db_args)
            q = extract(model, test.queries, deg, **q_args)
            break
        except UnreadableImageError as exc:
            if not test.skip_bad:
                raise type(exc)(f"{exc}; add ?skip_bad=true to the dataset to leave such files out", exc.path) from None
            if isinstance(exc, EnlargedTooFarError):  # only extraction finds it: that one file goes
                log.warning("%s; leaving it out (skip_bad)", exc)
                test.drop({exc.path}, {exc.path: str(exc)})
                continue
            if decoded_all:  # every image decoded once: this failure does not come from a file
                raise
            from loqi_core.data.folders import drop_unreadable

            log.warning("%s; decoding every image of %s to leave out the unreadable ones (skip_bad)", exc, test.name)
            drop_unreadable(test)
            decoded_all = True
    if dist_rank_world()[0] != 0:
        return None
    backend = resolve_backend(config.index, str(device))
    k = max(max(config.recall), config.top_k, config.pairs)
    t0 = time.perf_counter()
    ivf = IVFPQParams(nlist=config.ivf_nlist, m=config.ivf_m, nprobe=config.ivf_nprobe, refine=config.ivf_refine)
    idx, scores = search(db, q, k, backend, device=str(device), ivfpq=ivf)
    search_s = time.perf_counter() - t0
    gt = test.ground_truth(config.positive_radius) if test.labelled else None
    recalls = recall_at_n(idx, gt, config.recall) if gt is not None else {}
    sequence = match_sequences(test, db, q, gt, config) if config.sequence else None
    weights = str(model.info.get("weights"))
    db_weights = str(db_model.info.get("weights"))
    explicit = test.positives is not None
    search_name = {"flat": "exact inner product, FAISS flat (CPU)", "torch": f"exact inner product, torch top-k ({device.type})",
                   "ivfpq": "approximate, FAISS IVF-PQ" + (f", top {config.ivf_refine}·k re-ranked exactly" if config.ivf_refine else "")}[backend]
    protocol = {
        "database": "clean" if clean_database or isinstance(deg, Identity) else f"degraded ({deg.spec})",
        "queries": "clean" if isinstance(deg, Identity) else f"degraded ({deg.spec})",
        "encoder": "database and queries encoded by the model under test" if database_model is None
        else f"queries encoded by the model under test, the database by {db_weights}",
        "degradation": deg.spec or "none",
        "clean_database": clean_database,
        "temporal": _temporal_both(test, db_deg, deg),
        "seed": seed,
        "positives": "explicit ground truth from the dataset" if explicit
        else f"database images within {config.positive_radius:g} m of the query (UTM east/north)" if gt is not None
        else f"unknown: {LABEL_FREE}",
        "positive_radius_m": None if explicit or gt is None else config.positive_radius,
        "queries_without_positives": "n/a (label-free)" if gt is None
        else f"count as misses ({sum(1 for g in gt if len(g) == 0)} of {len(gt)})",
        "labelled": gt is not None,
        "recall_at": list(config.recall),
        "search": search_name,
        "ties": "equal scores ranked by the lower database index",
        "precision": "bf16 autocast" if use_bf16(config.precision, device) else "fp32",
        "weights": weights,
        "database_weights": db_weights,
        "untrained": weights == "random" if untrained is None else untrained,
        "n_database": len(test.database),
        "n_queries": len(test.queries),
    }
    if sequence is not None:
        protocol["sequence"] = sequence.protocol
    return EvalResult(
        dataset=test.name,
        recalls=recalls,
        predictions=idx,
        scores=scores,
        ground_truth=gt,
        protocol=protocol,
        database_paths=list(test.database.paths),
        query_paths=list(test.queries.paths),
        timings={"database_s": stats["database"].seconds, "queries_s": stats["queries"].seconds, "search_s": search_s},
        cache={"descriptors_cached": [stats["database"].descriptors_cached, stats["queries"].descriptors_cached],
               "image_shards": {k: dict(v.image_shards) for k, v in stats.items()}},
        degradation=deg,
        database_positions=test.database.positions,
        query_positions=test.queries.positions,
        database_descriptors=db,
        query_descriptors=q,
        sequence=sequence,
    )
