"""One student for every quality: students trained on fixed and on sampled JPEG, evaluated at fixed levels.

On the Nordland frames (``--data``: a copy of ``nordland_64x32/``), split by place: blocks of 100 frames
alternate between test and training, with the 3 frames at each block's edges left out so no test place is within
25 m of a training one. Test: summer database, winter queries; training: both seasons, label-free. For each
training spec (default ``jpeg10``, ``jpeg50``, ``jpeg[5:50]``) and seed, one ``loqi run`` (lite0-gem, the method's
defaults, MSE) evaluates the pretrained model and the student at every level of ``--levels`` (clean, jpeg5,
jpeg10, jpeg30, jpeg50). Runs are independent processes (``--jobs``). Prints Markdown tables of R@1 and R@5, mean over
seeds, Δ against the pretrained model at the same level; ``--out`` gets every run's figures as JSON.

Full grid (the lead's GPU run, 16 CPU cores; all places, the method's input size, 2 seeds; lr 2e-4 because on the
CPU lr 5e-5 moved no student past the teacher):

    python benchmarks/degrade_range.py --data DIR --device cuda --jobs 6 --steps 400 --set distill.lr=2e-4 \\
        --out degrade_range_gpu.json

Small CPU run (two shared cores; 300 test places, 1200 training images, a 64×128 input), one seed at a time:

    python benchmarks/degrade_range.py --data ../shared/data/nordland_64x32 --device cpu --threads 1 --steps 120 \\
        --test-places 300 --train-images 1200 --set "model.image_size=[64,128]" --seeds 0 --work W --out s0.json
    python benchmarks/degrade_range.py ... --seeds 1 --work W --add s0.json --out both.json

Run directories are named by seed and training spec under ``--work``: started again with the same ``--work``, a
run that finished is taken from there (training resumes, evaluations come from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

BLOCK = 100
"""Frames per block; blocks alternate test / train."""
MARGIN = 3
"""Frames left out at each block edge: 25 m accepts ±2 frames, so no test place neighbours a training one."""
FRAMES = 3576


def frame_name(frame: int) -> str:
    """gmberton's layout: frame i at UTM (0, 10·i) m, as the demo dataset names them."""
    return f"@0.00@{10 * frame:.2f}@@@@@{frame}@@@@@@@@.png"


def evenly(items: list[int], n: int | None) -> list[int]:
    """``n`` items spread evenly over the list (all when ``n`` is None or larger)."""
    if n is None or n >= len(items):
        return items
    return [items[round(i * (len(items) - 1) / max(1, n - 1))] for i in range(n)]


def build_split(data: Path, out: Path, test_places: int | None, train_images: int | None) -> dict[str, int]:
    """Copy the frames into ``out/images/{test/database,test/queries,train}`` (hard links when possible)."""
    test, train = [], []
    for block in range(FRAMES // BLOCK + 1):
        frames = [f for f in range(block * BLOCK + MARGIN, (block + 1) * BLOCK - MARGIN) if 1 <= f <= FRAMES]
        (test if block % 2 == 0 else train).append(frames)
    test_frames = evenly([f for b in test for f in b], test_places)
    train_frames = evenly([f for b in train for f in b], None if train_images is None else train_images // 2)
    jobs = [("summer", "test/database", f) for f in test_frames] + [("winter", "test/queries", f) for f in test_frames]
    jobs += [(season, f"train/{season}", f) for f in train_frames for season in ("summer", "winter")]
    for season, folder, frame in jobs:
        source = data / season / f"images-{10 * frame:05d}.png"
        if not source.exists():
            raise SystemExit(f"--data {data}: missing {source} (expected a copy of nordland_64x32/)")
        target = out / "images" / folder / frame_name(frame)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                target.write_bytes(source.read_bytes())
    return {"test_places": len(test_frames), "train_images": 2 * len(train_frames)}


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """One ``loqi run`` (teacher and student at every level); returns its recall@N per row and its seconds."""
    import torch

    torch.set_num_threads(job["threads"])
    from loqi_core.config import resolve_run_config
    from loqi_core.experiments.runner import run_experiment

    overrides = {
        "model.method": job["method"], "degrade": job["train"], "seed": job["seed"], "device": job["device"],
        "distill.train": f"folder:{job['split']}", "eval.test": [f"folder:{job['split']}"],
        "eval.degrade": job["levels"], "eval.cache_dir": job["cache"], "eval.grid_queries": 0,
        "distill.num_workers": job["workers"], "eval.num_workers": job["workers"], "out": job["out"],
        **({"distill.max_steps": job["steps"]} if job["steps"] else {}), **job["sets"],
    }  # fmt: skip
    config = resolve_run_config(None, overrides)
    start = time.perf_counter()
    with open(Path(job["out"]).with_suffix(".log"), "w") as log:
        run_dir = run_experiment(config, echo=lambda text: print(text, file=log, flush=True))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = next(iter(metrics["datasets"].values()))["rows"]
    return {"train": job["train"], "seed": job["seed"], "seconds": round(time.perf_counter() - start, 1),
            "recall": rows, "run_dir": str(run_dir),
            "untrained": metrics["run"]["untrained"]}  # fmt: skip


def table(results: list[dict[str, Any]], trains: list[str], levels: list[str], metric: str = "R@1") -> str:
    """``metric`` per level (columns) for the pretrained model and each training spec (rows), mean over seeds."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def cell(row: str, level: str, runs: list[dict[str, Any]]) -> str:
        if row == "pretrained_degraded":  # the same teacher in every run of a seed
            runs = list({r["seed"]: r for r in runs}.values())
        values = [r["recall"][f"{row}@{level}"][metric] for r in runs]
        base = mean([r["recall"][f"pretrained_degraded@{level}"][metric] for r in runs])
        spread = f" ±{(max(values) - min(values)) / 2:.1f}" if len(values) > 1 else ""
        delta = f" ({mean(values) - base:+.1f})" if row != "pretrained_degraded" else ""
        return f"{mean(values):.1f}{spread}{delta}"

    names = ["clean" if level == "none" else level for level in levels]
    lines = [f"| {metric} (mean ± half-range over seeds; Δ vs pretrained) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(levels)]  # fmt: skip
    lines.append("| pretrained (teacher) | " + " | ".join(cell("pretrained_degraded", lv, results) for lv in levels) + " |")
    for train in trains:
        runs = [r for r in results if r["train"] == train]
        lines.append(f"| student trained on `{train}` | " + " | ".join(cell("distilled", lv, runs) for lv in levels) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a copy of nordland_64x32/ (summer/, winter/)")
    ap.add_argument("--train-specs", default="jpeg10;jpeg50;jpeg[5:50]", help="training specs, separated by ;")
    ap.add_argument("--levels", default="none,jpeg5,jpeg10,jpeg30,jpeg50", help="evaluation levels (none = clean)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--metrics", default="R@1,R@5", help="one table per recall@N")
    ap.add_argument("--method", default="lite0-gem")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
    ap.add_argument("--test-places", type=int, default=None, help="spread this many test places over the line (default all)")
    ap.add_argument("--train-images", type=int, default=None, help="training images, both seasons (default all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPU cores / jobs)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers per run (default 2 on CUDA, 0 on CPU)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    ap.add_argument("--work", type=Path, default=None, help="where the split, caches and run directories go (default a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write every run's figures here as JSON")
    ap.add_argument("--add", type=Path, action="append", default=[], help="also table the runs of an earlier --out FILE")
    args = ap.parse_args()

    from loqi_core.config import parse_override
    from loqi_core.report.names import slug

    work = args.work or Path(tempfile.mkdtemp(prefix="loqi-degrade-range-"))
    split = work / "split"
    sizes = build_split(args.data, split, args.test_places, args.train_images)
    trains = [t.strip() for t in args.train_specs.split(";") if t.strip()]
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    workers = args.workers if args.workers is not None else (2 if args.device.startswith("cuda") else 0)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [
        {"method": args.method, "train": t, "seed": s, "device": args.device, "split": str(split), "levels": levels,
         "cache": str(work / ("cache" if args.jobs == 1 else f"cache-{i}")), "workers": workers, "threads": threads,
         "out": str(work / f"run-s{s}-{slug(t)}"), "steps": args.steps, "sets": dict(parse_override(x) for x in args.sets)}
        for i, (s, t) in enumerate((s, t) for s in seeds for t in trains)
    ]  # fmt: skip
    print(f"split: {sizes}; {len(jobs)} runs, {args.jobs} at a time, {threads} threads each; work dir {work}", flush=True)
    start = time.perf_counter()
    if args.jobs == 1:
        results = []
        for job in jobs:
            results.append(one_run(job))
            print(f"  {job['train']} seed {job['seed']}: {results[-1]['seconds']} s", flush=True)
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one_run, jobs))
    seconds = time.perf_counter() - start
    results += [r for f in args.add for r in json.loads(f.read_text())["runs"]]
    md = "\n\n".join(table(results, trains, levels, m.strip()) for m in args.metrics.split(","))
    print(f"\n{md}\n\n{len(results)} runs in {seconds:.0f} s on {args.device}; split {sizes}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "split": sizes,
                                        "seconds": round(seconds, 1), "table": md, "runs": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
