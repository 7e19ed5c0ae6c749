"""Evaluation throughput: steady-state extraction against the bare forward pass, the degraded-image cache, the
paper protocol's cost, exact search backends, IVF-PQ at scale.

Run by hand (never in unit tests)::

    python benchmarks/eval_throughput.py --skip search,ivfpq,protocol           # extraction and cache, CPU defaults
    python benchmarks/eval_throughput.py --device cuda --images 16384 --workers 15 --batch 256 --skip search,ivfpq
    python benchmarks/eval_throughput.py --skip extract,cache,ivfpq --search-scale 0.25
    python benchmarks/eval_throughput.py --skip extract,cache,search,ivfpq --protocol-methods mixvpr,salad

0. ``decode``: ``read_image`` against the decoding it replaced and torchvision.io's JPEG decoder, on the same files
   (CPU seconds per image).
   ``handover``: the main process's CPU time per image to receive 64-image shards from a DataLoader worker, one
   shared-memory block per image (before) against one per shard (now).
1. ``extract`` (steady state): ``--images`` generated files per format in ``--formats`` (JPEG and PNG of
   ``--file-size``, written once into ``--data`` and reused), and three columns side by side in one process:
   *loader only* (extraction's own DataLoader: read and decode in the workers, no model), *bare forward*
   (``model(x)`` on a prepared batch already on the device, same model, batch and precision; before and after the
   extraction, averaged) and *extraction*
   (``loqi_core.evaluation.engine.extract`` itself, cache off: loader, size bucketing, preprocessing on the device,
   forward, descriptors streamed to a memory map). ``ratio`` = extraction / bare forward. With 0 workers (the CPU
   default on small machines) every stage runs in this process, so the ratio is also given in CPU seconds, which
   other jobs on a shared machine do not distort.
2. ``cache``: the degraded-image cache with ``--degrade``: a first run (read, degrade, write the shards), a cache
   hit (today's raw uint8 shards) and the same images in the PNG shards loqi wrote before (lossless PNG, Pillow),
   read side by side in every round; bytes on disk per image; extraction on a cache hit against the bare forward.
3. ``protocol``: images/s of ``encode_batch`` (preprocessing on the device + forward) at a native test-image size
   under ``upstream`` and ``paper`` (their input sizes, precision and batch) for each of ``--protocol-methods``;
   with ``--protocol-step``, each method's bare distillation step beside it. On a CPU in CPU seconds.
4. ``search``: exact search at the MSLS × SALAD size (11 084 queries × 18 871 database × 8448 dims, random unit
   vectors): FAISS flat on the CPU, torch top-k on the CPU, and torch top-k on the GPU when there is one.
5. ``ivfpq``: IVF-PQ on one million synthetic clustered descriptors: build time, search time, and how often the
   exact nearest neighbour is the IVF-PQ top-1 (and within its top 10).

``--rounds R`` repeats parts 1-3 and reports every round with the mean and the spread (min-max).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, {gpu}")  # fmt: skip


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _write_chunk(paths: list[Path], size: tuple[int, int], fmt: str, seed: int) -> None:
    from PIL import Image

    from loqi_core.testing.helpers import random_images

    for path, img in zip(paths, random_images(len(paths), *size, seed=seed)):
        tmp = path.with_name(path.name + ".tmp")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        tmp.replace(path)


def write_images(folder: Path, n: int, size: tuple[int, int], fmt: str) -> list[Path]:
    """``n`` smooth random photo-like images (``loqi_core.testing.helpers.random_images``) as JPEG (quality 90) or
    PNG files, written once (by every CPU) and reused by later runs."""
    from concurrent.futures import ProcessPoolExecutor

    suffix = {"jpeg": ".jpg", "png": ".png"}[fmt]
    folder = folder / f"{fmt}-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}{suffix}" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    chunks = [missing[k : k + 64] for k in range(0, len(missing), 64)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for done in [pool.submit(_write_chunk, [paths[i] for i in c], size, fmt, c[0]) for c in chunks]:
            done.result()
    return paths


def loader_rate(dataset, workers: int) -> dict:
    """Images/s of extraction's own DataLoader over ``dataset`` (as ``extract`` builds it: one shard per item),
    with the seconds to the first shard; start-up included, as in ``extract``."""
    from torch.utils.data import DataLoader

    from loqi_core.evaluation.engine import _identity_collate

    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity_collate,
                        prefetch_factor=2 if workers else None)  # fmt: skip
    t0, c0, count, first = time.perf_counter(), time.process_time(), 0, None
    for indices, _, status in loader:
        if isinstance(status, Exception):
            raise status
        count += len(indices)
        first = first if first is not None else time.perf_counter() - t0
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"img_s": count / wall, "cpu_ms_per_img": 1e3 * cpu / count, "first_shard_s": first, "images": count}


def bare_rate(model, size: tuple[int, int], batch: int, images: int, device, bf16: bool) -> dict:
    """Images/s of ``model(x)`` on a prepared batch already on the device (the ceiling of extraction)."""
    import torch

    x = model.prepare(torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8), device)
    steps = max(1, images // batch)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
        _sync(device)

        def run() -> None:
            for _ in range(steps):
                model(x)
            _sync(device)

        wall, cpu = _timed(run)
    return {"img_s": steps * batch / wall, "cpu_img_s": steps * batch / cpu, "images": steps * batch}


def extract_rate(model, images, degradation, cache, batch: int, workers: int, device, key: str) -> dict:
    """Images/s of ``extract`` itself (descriptors never cached: a new key every call)."""
    from loqi_core.evaluation.engine import ExtractStats, extract

    stats = ExtractStats()
    kw = dict(cache=cache, key={"bench": key}, device=device, batch_size=batch, num_workers=workers, stats=stats)
    wall, cpu = _timed(lambda: extract(model, images, degradation, **kw))
    return {"img_s": len(images) / wall, "cpu_img_s": len(images) / cpu, "shards": dict(stats.image_shards)}


def build(method: str, model_size: tuple[int, int] | None, device):
    import torch

    from loqi_core.models.model import build_model

    torch.manual_seed(0)
    params = {"vocabulary": "random"} if method == "anyloc" else None
    return build_model(method, weights="random", image_size=model_size, aggregator_params=params).to(device).eval()


def model_input(model, file_size: tuple[int, int]) -> tuple[int, int]:
    size = model.preprocess.size
    return tuple(size) if size is not None and model.preprocess.mode in ("resize", "center_crop") else file_size


def bench_extract(args, device, round_: int) -> list[dict]:
    """Part 1: per input format, loader only, bare forward and extraction, side by side."""
    from loqi_core.data.sets import ImageList
    from loqi_core.degrade.base import Identity
    from loqi_core.evaluation.cache import EvalCache
    from loqi_core.evaluation.engine import _ShardDataset, use_bf16

    model = build(args.method, args.model_size, device)
    bf16 = use_bf16(args.precision, device)
    size = model_input(model, args.file_size)
    rows = []
    for fmt in args.formats:
        paths = write_images(args.data, args.images, args.file_size, fmt)
        images = ImageList(paths)
        cache = EvalCache(enabled=False)
        extract_rate(model, ImageList(paths[: 2 * args.batch]), Identity(), cache, args.batch, args.workers, device, "warm-up")
        loader = loader_rate(_ShardDataset(images, Identity(), 0, None), args.workers)
        before = bare_rate(model, size, args.batch, args.bare_images or args.images, device, bf16)
        full = extract_rate(model, images, Identity(), cache, args.batch, args.workers, device, f"{fmt}-{round_}")
        after = bare_rate(model, size, args.batch, args.bare_images or args.images, device, bf16)  # the load may change
        bare = {k: statistics.mean([before[k], after[k]]) for k in ("img_s", "cpu_img_s", "images")}
        rows.append({"round": round_, "method": args.method, "format": fmt, "file_size": list(args.file_size),
                     "model_input": list(size), "images": args.images, "batch": args.batch, "workers": args.workers,
                     "device": str(device), "precision": "bf16" if bf16 else "fp32", "loader_img_s": loader["img_s"],
                     "loader_first_shard_s": loader["first_shard_s"], "bare_img_s": bare["img_s"], "bare_images": bare["images"],
                     "bare_before_after_img_s": [before["img_s"], after["img_s"]],
                     "extract_img_s": full["img_s"], "ratio": full["img_s"] / bare["img_s"],
                     "cpu_ratio": full["cpu_img_s"] / bare["cpu_img_s"] if args.workers == 0 else None})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def pillow_read(path: Path):
    """How ``read_image`` decoded a file before (Pillow, ``convert("RGB")``, three copies): part ``decode``'s baseline."""
    import torch
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def torchvision_read(path: Path):
    """torchvision.io's libjpeg-turbo decoder, brought to the same contiguous 3×H×W tensor with one copy."""
    import warnings

    import torch
    import torchvision.io as tio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hwc = tio.decode_jpeg(tio.read_file(str(path)), mode=tio.ImageReadMode.RGB).permute(1, 2, 0)
    return torch.from_numpy(np.array(hwc.numpy().transpose(2, 0, 1), order="C"))


def bench_decode(args, round_: int) -> list[dict]:
    """Part 0: ``read_image`` against the decoding it replaced and against torchvision.io's JPEG decoder, on the
    same files, interleaved, in CPU seconds per image."""
    from loqi_core.data.images import read_image

    readers = {"read_image": read_image, "pillow_before": pillow_read, "torchvision": torchvision_read}
    rows = []
    for fmt in args.formats:
        paths = write_images(args.data, args.images, args.file_size, fmt)[: args.decode_images]
        mine = {k: v for k, v in readers.items() if k != "torchvision" or fmt == "jpeg"}
        ms: dict[str, list[float]] = {k: [] for k in mine}
        for read in mine.values():
            read(paths[0])  # imports
        for _ in range(args.cache_repeats):
            for name, read in mine.items():
                ms[name].append(1e3 * _timed(lambda: [read(p) for p in paths])[1] / len(paths))
        same = {name: all(bool((read(p) == read_image(p)).all()) for p in paths[:32]) for name, read in mine.items()}
        rows.append({"round": round_, "format": fmt, "file_size": list(args.file_size), "images": len(paths), "ms": ms,
                     "same_pixels_first_32": same})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


class _SyntheticShards:
    """Shards of ``per_shard`` uint8 3×H×W images made in the worker, as separate tensors or as views of one buffer
    (what ``_ShardDataset`` hands over now, through ``_one_buffer``)."""

    def __init__(self, shards: int, per_shard: int, size: tuple[int, int], one_buffer: bool) -> None:
        self.shards, self.per_shard, self.size, self.one_buffer = shards, per_shard, size, one_buffer

    def __len__(self) -> int:
        return self.shards

    def __getitem__(self, i: int):
        import torch

        from loqi_core.evaluation.engine import _one_buffer

        images = [torch.full((3, *self.size), i % 256, dtype=torch.uint8) for _ in range(self.per_shard)]
        return list(range(self.per_shard)), _one_buffer(images) if self.one_buffer else images, "uncached"


def bench_handover(args) -> list[dict]:
    """Part ``handover``: the main process's CPU time per image to receive shards from one DataLoader worker, images
    as separate tensors (one shared-memory block each, as before) or as views of one buffer (now)."""
    rows = []
    for round_ in range(args.rounds):
        for one in (False, True):
            rate = loader_rate(_SyntheticShards(args.handover_shards, 64, args.file_size, one), 1)
            rows.append({"round": round_, "one_buffer": one, "size": list(args.file_size), "main_cpu_us_per_img": 1e3 * rate["cpu_ms_per_img"],
                         "img_s": rate["img_s"]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


class PngShards:
    """The degraded-image shards as loqi wrote them before the raw format (lossless PNG, compress level 1,
    concatenated; offsets in the sealed sidecar; read back with Pillow after the size/sha256 check): the
    baseline the raw shards are measured against."""

    def __init__(self, folder: Path, shards: list[list[list[int]]]) -> None:
        self.folder, self.shards = folder, shards

    @staticmethod
    def write(path: Path, images: list, indices: list[int]) -> None:
        from PIL import Image

        from loqi_core.evaluation.cache import seal

        blobs = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG", compress_level=1)
            blobs.append(buf.getvalue())
        path.write_bytes(b"".join(blobs))
        seal(path, {"offsets": np.cumsum([0] + [len(b) for b in blobs]).tolist(), "indices": indices})

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        from loqi_core.evaluation.cache import check

        path = self.folder / f"shard_{i:05d}.bin"
        record = check(path)
        data, offs = path.read_bytes(), record["offsets"]
        images = []
        for k in range(len(offs) - 1):
            with Image.open(io.BytesIO(data[offs[k] : offs[k + 1]])) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
        return record["indices"], images, "hit"


def bench_cache(args, device, round_: int, work: Path) -> dict:
    """Part 2: first run, raw-shard hit and PNG-shard read of the same degraded images, side by side; extraction
    on a cache hit against the bare forward."""
    from loqi_core.data.sets import ImageList
    from loqi_core.degrade.base import Identity
    from loqi_core.degrade.grammar import parse_degradation
    from loqi_core.evaluation.cache import SHARD_FORMAT, EvalCache, read_shard
    from loqi_core.evaluation.engine import _ShardDataset, use_bf16

    fmt = args.formats[0]
    images = ImageList(write_images(args.data, args.images, args.file_size, fmt))
    degradation = parse_degradation(args.degrade)
    cache = EvalCache(work / f"cache-{round_}")
    folder = cache.entry("images", {"bench": round_, "format": SHARD_FORMAT})
    clean = loader_rate(_ShardDataset(images, Identity(), 0, None), args.workers)
    raw_ds = _ShardDataset(images, degradation, 0, folder)
    first = loader_rate(raw_ds, args.workers)
    png_folder = work / f"png-{round_}"
    png_folder.mkdir()
    for i in range(len(raw_ds)):
        indices, imgs, _ = read_shard(folder / f"shard_{i:05d}.bin")
        PngShards.write(png_folder / f"shard_{i:05d}.bin", imgs, indices)
    png_ds = PngShards(png_folder, raw_ds.shards)
    raw, png = [], []
    for _ in range(args.cache_repeats):  # interleaved, so both see the same machine load
        raw.append(loader_rate(raw_ds, args.workers))
        png.append(loader_rate(png_ds, args.workers))
    ratios = [r["img_s"] / p["img_s"] for r, p in zip(raw, png)]
    cpu_ratios = [p["cpu_ms_per_img"] / r["cpu_ms_per_img"] for r, p in zip(raw, png)]
    raw_bytes = sum(p.stat().st_size for p in folder.glob("shard_*.bin"))
    png_bytes = sum(p.stat().st_size for p in png_folder.glob("shard_*.bin"))

    model = build(args.method, args.model_size, device)
    bf16 = use_bf16(args.precision, device)
    miss_cache = EvalCache(work / f"cache-{round_}-first")
    subset = ImageList(images.paths[: args.cache_extract_images or len(images)])
    first_extract = extract_rate(model, subset, degradation, miss_cache, args.batch, args.workers, device, f"first-{round_}")
    hit = extract_rate(model, subset, degradation, miss_cache, args.batch, args.workers, device, f"hit-{round_}")
    bare = bare_rate(model, model_input(model, args.file_size), args.batch, args.bare_images or len(subset), device, bf16)
    row = {"round": round_, "degrade": args.degrade, "format": fmt, "images": len(images), "workers": args.workers,
           "loader_clean_img_s": clean["img_s"], "loader_first_run_img_s": first["img_s"],
           "raw_hit_img_s": [r["img_s"] for r in raw], "png_hit_img_s": [p["img_s"] for p in png],
           "raw_over_png": ratios, "raw_over_png_cpu": cpu_ratios if args.workers == 0 else None, "raw_bytes_per_img": raw_bytes / len(images), "png_bytes_per_img": png_bytes / len(images),
           "extract_images": len(subset), "extract_first_run_img_s": first_extract["img_s"], "extract_hit_img_s": hit["img_s"], "hit_shards": hit["shards"],
           "bare_img_s": bare["img_s"], "hit_ratio": hit["img_s"] / bare["img_s"],
           "degradation_share_of_first_run": 1 - first_extract["img_s"] / hit["img_s"],
           "degradation_share_of_first_run_cpu": 1 - first_extract["cpu_img_s"] / hit["cpu_img_s"] if args.workers == 0 else None,
           "cpu_hit_ratio": hit["cpu_img_s"] / bare["cpu_img_s"] if args.workers == 0 else None}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def bench_protocol(args, device) -> list[dict]:
    """Part 3: images/s under the upstream and paper protocols at a native test-image size, for each method: the
    model, batch size and precision as ``loqi eval --protocol P`` resolves them (random weights). With
    ``--protocol-step``, also the method's bare distillation step (``distill_throughput.py``) at its upstream
    input size: the ratio that turns a documented step rate into an evaluation rate. The timings alternate over
    ``--protocol-rounds`` rounds (``--protocol-batches`` batches each), so every ratio is paired within a round."""
    import types

    import torch

    from distill_throughput import bare_step, input_size, run_config
    from loqi_core.config import parse_override, resolve_run_config
    from loqi_core.evaluation.engine import encode_batch, use_bf16
    from loqi_core.hooks.manager import get_plugins
    from loqi_core.models.model import build_model
    from loqi_core.testing.helpers import random_images

    clock = time.process_time if device.type == "cpu" else time.perf_counter  # on a shared CPU: this process's CPU seconds
    rows = []
    for method in args.protocol_methods:
        sets = [a.split(":", 1)[1] for a in args.protocol_set if a.split(":", 1)[0] == method]
        if method == "anyloc" and not any("vocabulary" in a for a in sets):
            sets.append("model.aggregator_params.vocabulary=random")  # offline: no vocabulary download
        timed, info = {}, {}
        for protocol in ("upstream", "paper"):
            config = resolve_run_config(None, {"model.method": method, "model.weights": "random", "protocol": protocol,
                                               **dict(parse_override(a) for a in sets)})  # fmt: skip
            m = config.model
            torch.manual_seed(0)
            model = build_model(m.method, encoder=m.encoder, aggregator=m.aggregator, encoder_params=m.encoder_params,
                                aggregator_params=m.aggregator_params, weights="random", image_size=m.image_size,
                                protocol=protocol).to(device).eval()  # fmt: skip
            bf16 = use_bf16(config.eval.precision, device)
            batch = args.protocol_batch or config.eval.batch_size
            imgs = random_images(batch, *args.native_size, seed=1)
            timed[protocol] = (batch, lambda model=model, imgs=imgs, bf16=bf16: encode_batch(model, imgs, device, bf16))
            info[protocol] = {"model_input": list(model.prepare(imgs[:1], device).shape[-2:]), "precision": "bf16" if bf16 else "fp32",
                              "batch": batch}  # fmt: skip
            if args.protocol_step and protocol == "upstream":
                size = input_size(method, get_plugins())
                ns = types.SimpleNamespace(degrade="none", device=device.type, workers=0, precision=config.eval.precision, set=sets)
                step = bare_step(run_config(method, size, args.step_batch, 1, 1, ns, Path("unused")), size, args.step_batch, device, bf16)
                timed["step"] = (args.step_batch, step)
                info["step"] = {"model_input": list(size)}
        rates: dict[str, list[float]] = {k: [] for k in timed}
        for k, (_, fn) in timed.items():
            fn()  # warm-up
        for _ in range(args.protocol_rounds):
            for k, (n, fn) in timed.items():
                t0 = clock()
                for _ in range(args.protocol_batches):
                    fn()
                _sync(device)
                rates[k].append(n * args.protocol_batches / (clock() - t0))
        for protocol in ("upstream", "paper"):
            row = {"method": method, "protocol": protocol, "native_size": list(args.native_size), **info[protocol],
                   "rounds": args.protocol_rounds, "img_s_rounds": rates[protocol], "img_s": statistics.median(rates[protocol]),
                   "over_upstream_rounds": [p / u for p, u in zip(rates[protocol], rates["upstream"])],
                   "clock": "CPU seconds" if device.type == "cpu" else "wall", "device": str(device), "overrides": sets}  # fmt: skip
            if "step" in rates:
                row.update(step_input=info["step"]["model_input"], step_img_s=statistics.median(rates["step"]),
                           over_step_rounds=[p / s for p, s in zip(rates[protocol], rates["step"])])
            rows.append(row)
            print(json.dumps(row), flush=True)
        del timed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else f"{values[0]:.2f}"


def _median_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def print_extract(rows: list[dict]) -> None:
    print("| model | files | model input | images | batch | workers | device, precision | loader only img/s | bare forward img/s "
          "| extraction img/s | extraction / bare | (CPU seconds) | first shard s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['cpu_ratio']:.2f}" if r["cpu_ratio"] is not None else "—"
        print(f"| {r['method']} | {r['format'].upper()} {r['file_size'][0]}×{r['file_size'][1]} | {r['model_input'][0]}×{r['model_input'][1]} "
              f"| {r['images']} | {r['batch']} | {r['workers']} | {r['device']}, {r['precision']} | {r['loader_img_s']:.1f} "
              f"| {r['bare_img_s']:.1f} | {r['extract_img_s']:.1f} | {r['ratio']:.3f} | {cpu} | {r['loader_first_shard_s']:.2f} |")
    for fmt in sorted({r["format"] for r in rows}):
        mine = [r for r in rows if r["format"] == fmt]
        if len(mine) > 1:
            cpu = [r["cpu_ratio"] for r in mine if r["cpu_ratio"] is not None]
            print(f"\n{fmt}: extraction/bare over {len(mine)} rounds: mean (min-max) {_spread([r['ratio'] for r in mine])}"
                  + (f"; in CPU seconds {_spread(cpu)}" if cpu else ""))
    print()


def print_cache(rows: list[dict]) -> None:
    print("| round | loader img/s: clean | first run (degrade + write) | raw shards (hit) | PNG shards (before) | raw / PNG "
          "| bytes/img raw, PNG | extraction img/s (images): first run, hit | bare | hit / bare |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['loader_clean_img_s']:.0f} | {r['loader_first_run_img_s']:.0f} | {_spread(r['raw_hit_img_s'])} "
              f"| {_spread(r['png_hit_img_s'])} | {_spread(r['raw_over_png'])} | {r['raw_bytes_per_img']:.0f}, {r['png_bytes_per_img']:.0f} "
              f"| ({r['extract_images']}) {r['extract_first_run_img_s']:.1f}, {r['extract_hit_img_s']:.1f} | {r['bare_img_s']:.1f} | {r['hit_ratio']:.3f} |")
    ratios = [x for r in rows for x in r["raw_over_png"]]
    cpu = [x for r in rows for x in r["raw_over_png_cpu"] or []]
    share = [r["degradation_share_of_first_run"] for r in rows]
    cpu_share = [r["degradation_share_of_first_run_cpu"] for r in rows if r["degradation_share_of_first_run_cpu"] is not None]
    hit = [r["cpu_hit_ratio"] for r in rows if r["cpu_hit_ratio"] is not None]
    print(f"\nraw / PNG shard reads, all {len(ratios)} pairs: mean (min-max) {_spread(ratios)}"
          + (f"; in CPU seconds {_spread(cpu)}" if cpu else "") + f"\ndegradation's share of a first extraction: {_spread(share)}"
          + (f"; in CPU seconds {_spread(cpu_share)}; extraction on a hit / bare forward in CPU seconds {_spread(hit)}" if cpu_share else "")
          + "\n")


def bench_search(scale: float, dim: int, backends_wanted: list[str], repeats: int) -> list[dict]:
    """Seconds per exact search of Q×N×D random unit descriptors, top-10, for each backend (the first is the
    reference the others' top-1 is compared with)."""
    import torch

    from loqi_core.evaluation.search import search

    nq, nd = max(1, int(11084 * scale)), max(10, int(18871 * scale))
    rng = np.random.default_rng(0)
    db = _unit(rng.standard_normal((nd, dim), dtype=np.float32))
    q = _unit(rng.standard_normal((nq, dim), dtype=np.float32))
    rows = []
    known = {"flat": ("flat", "cpu", "FAISS flat, CPU"), "torch-cpu": ("torch", "cpu", "torch top-k, CPU")}
    if torch.cuda.is_available():
        known["torch-cuda"] = ("torch", "cuda", f"torch top-k, {torch.cuda.get_device_name(0)}")
    backends = [known[b] for b in backends_wanted if b in known]
    reference = None
    for backend, dev, label in backends:
        search(db[:100], q[:10], 10, backend, device=dev)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            idx, _ = search(db, q, 10, backend, device=dev)
            times.append(time.perf_counter() - t0)
        reference = idx if reference is None else reference
        rows.append({"backend": label, "queries": nq, "database": nd, "dim": dim, "seconds": min(times),
                     "agrees_with_first": float((idx[:, 0] == reference[:, 0]).mean())})  # fmt: skip
    return rows


def bench_ivfpq(n: int, dim: int, nq: int, nlist: int, m: int, nprobe: int) -> dict:
    """IVF-PQ against exact search on clustered synthetic descriptors."""
    from loqi_core.evaluation.search import IVFPQParams, build_ivfpq, refine, search

    rng = np.random.default_rng(1)
    centers = rng.standard_normal((4096, dim), dtype=np.float32)
    db = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        db[s:e] = centers[rng.integers(0, len(centers), e - s)] + 0.5 * rng.standard_normal((e - s, dim), dtype=np.float32)
    db = _unit(db)
    q = _unit(db[rng.choice(n, nq, replace=False)] + 0.1 * rng.standard_normal((nq, dim), dtype=np.float32))
    t0 = time.perf_counter()
    exact, _ = search(db, q, 1, "flat")
    exact_s = time.perf_counter() - t0
    params = IVFPQParams(nlist=nlist, m=m, nprobe=nprobe)
    t0 = time.perf_counter()
    index = build_ivfpq(db, params)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, idx = index.search(q, 10)
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, wide = index.search(q, 100)
    _, refined = refine(db, q, wide.astype(np.int64), 10)
    refine_s = time.perf_counter() - t0
    true = exact[:, 0]
    return {"database": n, "dim": dim, "queries": nq, "nlist": nlist, "m": m, "nprobe": nprobe,
            "build_s": build_s, "search_s": search_s, "exact_flat_s": exact_s,
            "true_nn_at_1": float((idx[:, 0] == true).mean()), "true_nn_in_top10": float((idx == true[:, None]).any(1).mean()),
            "refined_search_s": refine_s, "refined_true_nn_at_1": float((refined[:, 0] == true).mean()),
            "refined_true_nn_in_top10": float((refined == true[:, None]).any(1).mean()), "index_bytes_per_vector": m}  # fmt: skip


def main() -> None:
    import torch

    from loqi_core.util.devices import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lite0-gem")
    ap.add_argument("--images", type=int, default=8192, help="images per format (steady state: at least 8192)")
    ap.add_argument("--formats", default="jpeg,png", help="comma list: jpeg, png (the cache part uses the first)")
    ap.add_argument("--file-size", type=_size, default=(480, 640), help="HxW of the generated files (default a database image's 480x640)")
    ap.add_argument("--model-size", type=_size, default=None, help="HxW the model resizes to (default: the method's own)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "loqi-bench-images", help="where the files are kept")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--bare-images", type=int, default=None, help="images for the bare forward (default --images)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--degrade", default="jpeg10", help="the cache part's degradation")
    ap.add_argument("--cache-repeats", type=int, default=3, help="raw/PNG read pairs per round")
    ap.add_argument("--cache-extract-images", type=int, default=None, help="images of the cache part's extractions (default all)")
    ap.add_argument("--protocol-methods", default="mixvpr,cricavpr,salad,netvlad,anyloc")
    ap.add_argument("--native-size", type=_size, default=(480, 640), help="HxW of the protocol part's images")
    ap.add_argument("--protocol-rounds", type=int, default=5, help="alternating timings per method")
    ap.add_argument("--protocol-batches", type=int, default=1, help="batches per timing")
    ap.add_argument("--protocol-batch", type=int, default=None, help="default: eval.batch_size as the protocol resolves it")
    ap.add_argument("--protocol-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                    help="config override for one method, e.g. anyloc:model.encoder_params.depth=4")
    ap.add_argument("--protocol-step", action="store_true", help="also time each method's bare distillation step")
    ap.add_argument("--step-batch", type=int, default=2)
    ap.add_argument("--search-scale", type=float, default=1.0, help="fraction of 11 084 queries and 18 871 database")
    ap.add_argument("--dim", type=int, default=8448)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ivf-n", type=int, default=1_000_000)
    ap.add_argument("--ivf-dim", type=int, default=256)
    ap.add_argument("--ivf-queries", type=int, default=1000)
    ap.add_argument("--ivf-nlist", type=int, default=1024)
    ap.add_argument("--ivf-m", type=int, default=32)
    ap.add_argument("--ivf-nprobe", type=int, default=32)
    ap.add_argument("--search-backends", default="flat,torch-cpu,torch-cuda",
                    help="comma list, first = reference: flat, torch-cpu, torch-cuda (skipped without CUDA)")
    ap.add_argument("--decode-images", type=int, default=512, help="files per format of the decode part")
    ap.add_argument("--handover-shards", type=int, default=64, help="shards of 64 images in the handover part")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: decode, handover, extract, cache, protocol, search, ivfpq")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.formats = args.formats.split(",")
    args.protocol_methods = args.protocol_methods.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    skip = set(args.skip.split(",")) - {""}
    out: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {out['machine']}\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "decode" not in skip:
            out["decode"] = [r for k in range(args.rounds) for r in bench_decode(args, k)]
            print("| files | images | read_image ms/img | before ms/img | torchvision.io ms/img | before ÷ read_image | same pixels |")
            print("|---|---|---|---|---|---|---|")
            for r in out["decode"]:
                tv = _spread(r["ms"]["torchvision"]) if "torchvision" in r["ms"] else "—"
                gain = [b / n for b, n in zip(r["ms"]["pillow_before"], r["ms"]["read_image"])]
                print(f"| {r['format'].upper()} {r['file_size'][0]}×{r['file_size'][1]} | {r['images']} | {_spread(r['ms']['read_image'])} "
                      f"| {_spread(r['ms']['pillow_before'])} | {tv} | {_spread(gain)} | {all(r['same_pixels_first_32'].values())} |")
            print()
        if "handover" not in skip:
            out["handover"] = bench_handover(args)
            print("| shard hand-over from 1 worker | image | main-process CPU µs per image | img/s |\n|---|---|---|---|")
            for r in out["handover"]:
                print(f"| {'one buffer per shard (now)' if r['one_buffer'] else 'one block per image (before)'} "
                      f"| {r['size'][0]}×{r['size'][1]} | {r['main_cpu_us_per_img']:.0f} | {r['img_s']:.0f} |")
            print()
        if "extract" not in skip:
            out["extract"] = [r for k in range(args.rounds) for r in bench_extract(args, device, k)]
            print_extract(out["extract"])
        if "cache" not in skip:
            out["cache"] = [bench_cache(args, device, k, Path(tmp)) for k in range(args.rounds)]
            print_cache(out["cache"])
    if "protocol" not in skip:
        rows = out["protocol"] = bench_protocol(args, device)
        print("| method | protocol | native image | model input | precision | batch | img/s (median of rounds) | ÷ upstream, median (min-max) "
              "| ÷ bare distill step (its input) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            step = f"{_median_spread(r['over_step_rounds'])} ({r['step_input'][0]}×{r['step_input'][1]})" if "over_step_rounds" in r else ""
            print(f"| {r['method']} | {r['protocol']} | {r['native_size'][0]}×{r['native_size'][1]} | {r['model_input'][0]}×{r['model_input'][1]} "
                  f"| {r['precision']} | {r['batch']} | {r['img_s']:.3f} | {_median_spread(r['over_upstream_rounds'])} | {step} |")
        print()
    if "search" not in skip:
        rows = out["search"] = bench_search(args.search_scale, args.dim, args.search_backends.split(","), args.repeats)
        print("| search (top-10, exact) | queries × database × dim | seconds | top-1 agrees |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['backend']} | {r['queries']} × {r['database']} × {r['dim']} | {r['seconds']:.2f} | {r['agrees_with_first']:.4f} |")
        print()
    if "ivfpq" not in skip:
        r = out["ivfpq"] = bench_ivfpq(args.ivf_n, args.ivf_dim, args.ivf_queries, args.ivf_nlist, args.ivf_m, args.ivf_nprobe)
        head = f"{r['database']} × {r['dim']}, {r['queries']} queries, nlist {r['nlist']}, m {r['m']}, nprobe {r['nprobe']}"
        print(f"IVF-PQ: {head}; build (train + add) {r['build_s']:.1f} s; exact FAISS flat search of the same queries {r['exact_flat_s']:.2f} s\n")
        print("| IVF-PQ search | seconds (all queries) | true NN @1 | true NN in top 10 |\n|---|---|---|---|")
        print(f"| codes only | {r['search_s']:.3f} | {r['true_nn_at_1']:.3f} | {r['true_nn_in_top10']:.3f} |")
        print(f"| top 100 re-ranked exactly (refine 10) | {r['refined_search_s']:.3f} | {r['refined_true_nn_at_1']:.3f} | {r['refined_true_nn_in_top10']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
