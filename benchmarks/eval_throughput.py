"""Evaluation throughput: extraction against the bare forward pass, exact search backends, IVF-PQ at scale.

Run by hand (never in unit tests)::

    python benchmarks/eval_throughput.py                       # everything, full sizes
    python benchmarks/eval_throughput.py --search-scale 0.25   # a smaller search problem on a slow machine
    python benchmarks/eval_throughput.py --skip extract,ivfpq --json out.json

1. Extraction: ``loqi_core.evaluation.engine.extract`` (PNG decode in DataLoader workers, size bucketing, preprocessing,
   forward, descriptors streamed to a memory map; cache off) against a bare ``model(x)`` loop on tensors that
   are already prepared on the device, same model, batch size and precision. The ratio is the pipeline's cost.
2. Exact search at the MSLS × SALAD size (11 084 queries × 18 871 database × 8448 dims, random unit vectors):
   FAISS flat on the CPU, torch top-k on the CPU, and torch top-k on the GPU when there is one.
3. IVF-PQ on one million synthetic clustered descriptors: build time, search time, and how often the exact
   nearest neighbour is the IVF-PQ top-1 (and within its top 10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}, {gpu}"


def bench_extract(method: str, n: int, size: int, batch: int, workers: int, device: str) -> dict:
    """Images/s of the evaluation pipeline and of the bare forward pass of the same model."""
    import torch
    from PIL import Image

    from loqi_core.data.sets import ImageList
    from loqi_core.degrade.base import Identity
    from loqi_core.evaluation.cache import EvalCache
    from loqi_core.evaluation.engine import extract, resolve_device, use_bf16
    from loqi_core.models.model import build_model

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build_model(method, weights="random", image_size=(size, size)).to(dev).eval()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            low = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
            p = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(low).resize((size, size), Image.BILINEAR).save(p)
            paths.append(p)
        images = ImageList(paths)
        bf16 = use_bf16("auto", dev)
        cache = EvalCache(enabled=False)
        kw = dict(cache=cache, key={"bench": True}, device=dev, batch_size=batch, num_workers=workers)
        extract(model, ImageList(paths[: 2 * batch]), Identity(), **kw)  # warm-up (workers, kernels)
        t0 = time.perf_counter()
        extract(model, images, Identity(), **{**kw, "key": {"bench": 2}})
        pipeline = n / (time.perf_counter() - t0)
        loader = loader_rate(images, workers)

    x = model.prepare(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8), dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        steps = max(1, n // batch)
        for _ in range(steps):
            model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        bare = steps * batch / (time.perf_counter() - t0)
    return {"method": method, "images": n, "size": size, "batch": batch, "workers": workers, "device": str(dev),
            "precision": "bf16" if bf16 else "fp32", "pipeline_img_s": pipeline, "bare_forward_img_s": bare,
            "ratio": pipeline / bare, "loader_only_img_s": loader}  # fmt: skip


def loader_rate(images, workers: int) -> float:
    """Images/s of extraction's own DataLoader alone (read and decode in the workers, no model), start-up included
    as in ``extract``: the ceiling that decoding puts on extraction."""
    from torch.utils.data import DataLoader

    from loqi_core.degrade.base import Identity
    from loqi_core.evaluation.engine import _identity_collate, _ShardDataset

    dataset = _ShardDataset(images, Identity(), 0, None)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_identity_collate,
                        prefetch_factor=2 if workers else None)
    t0, count = time.perf_counter(), 0
    for indices, _, _ in loader:
        count += len(indices)
    return count / (time.perf_counter() - t0)


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="lite0-gem")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
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
    ap.add_argument("--skip", default="", help="comma list of parts to skip: extract, search, ivfpq")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    skip = set(args.skip.split(",")) - {""}
    out: dict = {"machine": machine()}
    print(f"machine: {out['machine']}\n")
    if "extract" not in skip:
        e = out["extract"] = bench_extract(args.method, args.images, args.size, args.batch, args.workers, args.device)
        print("| model | input | images | batch | workers | device, precision | extraction img/s | bare forward img/s | ratio | loader only img/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {e['method']} | {e['size']}² PNG | {e['images']} | {e['batch']} | {e['workers']} | {e['device']}, {e['precision']} | "
              f"{e['pipeline_img_s']:.1f} | {e['bare_forward_img_s']:.1f} | {e['ratio']:.2f} | {e['loader_only_img_s']:.1f} |\n")
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
