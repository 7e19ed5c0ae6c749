"""How much of what a degradation takes does sequence matching give back, alone and with distillation on top?

The Nordland split of ``distill_gain.py`` (its ``build_data``: test places in alternate stretches of 200 frames,
256×128, summer database / winter queries, positives within 25 m = ±2 frames; training frames from the other
stretches), with each test stretch in its own folder, so that each is one ordered traverse
(``folder:ROOT?order=frame``: capture order from the frame index in field 7 of the names).

1. Runs: per degradation (``--degrade``) and seed one ``loqi run`` of ``--method`` with the method's defaults
   (teacher clean and degraded, one distilled student, the student evaluated at clean and at its degradation,
   ``--eval-degrade none,X``), descriptors saved. The teacher's rows come from the cache after the first run; each
   student serves every sequence length (one student per degradation per seed, no retraining per L).
2. Matching: from the saved descriptors of every row, R@1 of the single-frame search and of sequence matching
   (``loqi_core.evaluation.sequence``, SeqSLAM's defaults but the length) for each ``--lengths`` L, with
   per-query hits for paired sign tests (student vs teacher on the same queries, same L, pooled over seeds).
3. Cost: seconds per query of sequence matching against the single-frame search on the same descriptors, side by
   side in one process at one thread: offline (all queries; FAISS flat, k = 1) and online (one frame at a time
   through ``SequenceStream``), at the split's size and at Nordland's full database size (27 592 random unit
   descriptors of the method's dimension).

    # the tables of docs/evaluation.md (six `loqi run`s, 5 to 13 minutes each on a shared 2-core CPU, with its load)
    OMP_NUM_THREADS=1 python benchmarks/sequence_gain.py --data ../shared/data/nordland_64x32 --out seq.json \\
        --seeds 0 1 2 --threads 1 --repeats 5
    python benchmarks/sequence_gain.py --table seq.json        # the tables again from a results JSON
    # tiny smoke run
    python benchmarks/sequence_gain.py --data ../shared/data/nordland_64x32 --out /tmp/s.json --test-places 40 \\
        --train-every 20 --steps 3 --seeds 0 --degrade jpeg10 --lengths 1 5 --repeats 1 --cost-queries 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from distill_gain import BLOCK, build_data  # noqa: E402  (the same split)

from loqi_core.report.seeds import binomial_p, mean_sd, sign_test  # noqa: E402  (the CLI's statistics)

FULL_NORDLAND = (27592, 2760)


def stretch_layout(test: Path, out: Path) -> Path:
    """The test set again with each stretch of ``BLOCK`` frames in its own folder: one ordered traverse each."""
    done = out / "done.json"
    names = sorted(p.name for p in (test / "images" / "test" / "database").iterdir())
    if done.exists() and json.loads(done.read_text()) == names:
        return out
    shutil.rmtree(out, ignore_errors=True)
    for part in ("database", "queries"):
        for src in sorted((test / "images" / "test" / part).iterdir()):
            frame = int(src.name.split("@")[7])
            folder = out / "images" / "test" / part / f"stretch{frame // BLOCK:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, folder / src.name)
    done.write_text(json.dumps(names))
    return out


def one_run(job: dict[str, Any]) -> Path:
    """One ``loqi run`` (teacher rows, distillation, student at clean and degraded), descriptors saved."""
    import torch

    from loqi_core.config import resolve_run_config
    from loqi_core.experiments.runner import run_experiment

    torch.set_num_threads(job["threads"])
    run_dir = Path(job["out"])
    if (run_dir / "metrics.json").exists():
        return run_dir
    overrides = {
        "model.method": job["method"], "degrade": job["degrade"], "seed": job["seed"], "device": job["device"],
        "distill.train": f"folder:{job['train']}", "eval.test": [f"folder:{job['test']}?order=frame"],
        "eval.degrade": ["none", job["degrade"]], "eval.save_descriptors": True, "out": str(run_dir),
        "eval.grid_queries": 0, "eval.cache_dir": job["cache"], "distill.tensorboard": False,
        "threads": job["threads"], "distill.num_workers": 0, "eval.num_workers": 0,
    }  # fmt: skip
    if job["steps"]:
        overrides["distill.max_steps"] = job["steps"]
    run_experiment(resolve_run_config(None, overrides), echo=lambda _: None)
    return run_dir


def load_row(run_dir: Path, row: str, test) -> tuple[np.ndarray, np.ndarray]:
    """The descriptors a run saved for ``row``, checked to be in the test set's image order."""
    from loqi_core.report.names import slug

    folder = run_dir / "descriptors" / f"{slug(test.name)}__{slug(row)}"
    root = Path(json.loads((folder / "info.json").read_text())["root"])
    for part, images in (("database", test.database), ("queries", test.queries)):
        names = (folder / f"{part}.txt").read_text().splitlines()
        if names != [str(p.relative_to(root)) for p in images.paths]:
            raise SystemExit(f"{folder}: {part}.txt is not in the order of the test set")
    return np.load(folder / "database.npy"), np.load(folder / "queries.npy")


def hits_at_1(predictions: np.ndarray, truth: list[np.ndarray]) -> list[int]:
    return [int(p[0] in t) for p, t in zip(predictions, truth)]


def match_run(run_dir: Path, test, lengths: list[int]) -> dict[str, Any]:
    """Per row of one run: R@1 hits of the single-frame search and of sequence matching at each length."""
    from loqi_core.evaluation.search import search
    from loqi_core.evaluation.sequence import SequenceParams, sequence_search, traverses_of

    metrics = json.loads((run_dir / "metrics.json").read_text())
    (data,) = metrics["datasets"].values()
    truth = test.ground_truth(25.0)
    database_t, query_t = traverses_of(test)
    rows = {}
    for row in data["rows"]:
        db, q = load_row(run_dir, row, test)
        frame = hits_at_1(search(db, q, 1, "flat")[0], truth)
        if abs(100 * np.mean(frame) - data["rows"][row]["R@1"]) > 1e-6:
            raise SystemExit(f"{run_dir} {row}: R@1 {100 * np.mean(frame)} here, {data['rows'][row]['R@1']} in the run")
        seqs = {str(n): hits_at_1(sequence_search(db, q, database_t, query_t, SequenceParams(n), 1)[0], truth)
                for n in lengths}  # fmt: skip
        rows[row] = {"frame": frame, "sequence": seqs}
    return rows


def cost(database: np.ndarray, queries: np.ndarray, lengths: list[int], repeats: int, stream: int) -> dict[str, Any]:
    """Seconds per query, the median of ``repeats`` alternated in one process: offline, the single-frame FAISS flat
    search of all queries against sequence matching (k = 1, one traverse each); online, one frame at a time (the
    first ``stream`` queries), the frame's similarity row and its best match against the same row through
    ``SequenceStream.push`` + ``top_k``."""
    from loqi_core.evaluation.search import search
    from loqi_core.evaluation.sequence import (
        SequenceParams,
        SequenceStream,
        Traverses,
        sequence_search,
        similarity_matrix,
        top_k,
    )

    database_t = Traverses.of([list(range(len(database)))], len(database))
    query_t = Traverses.of([list(range(len(queries)))], len(queries))
    offline: dict[str, list[float]] = {"frame": [], **{str(n): [] for n in lengths}}
    online: dict[str, list[float]] = {"frame": [], **{str(n): [] for n in lengths}}
    frames = queries[:stream]
    for _ in range(repeats):
        t0 = time.perf_counter()
        search(database, queries, 1, "flat")
        offline["frame"].append((time.perf_counter() - t0) / len(queries))
        t0 = time.perf_counter()
        for q in frames:
            int(np.argmax(database @ q))
        online["frame"].append((time.perf_counter() - t0) / len(frames))
        for n in lengths:
            t0 = time.perf_counter()
            sequence_search(database, queries, database_t, query_t, SequenceParams(n), 1, rate=1.0)
            offline[str(n)].append((time.perf_counter() - t0) / len(queries))
            matcher = SequenceStream(database_t, SequenceParams(n), rate=1.0)
            t0 = time.perf_counter()
            for q in frames:
                top_k(matcher.push(similarity_matrix(q[None], database)[0])[None], 1)
            online[str(n)].append((time.perf_counter() - t0) / len(frames))
    out: dict[str, Any] = {"database": len(database), "queries": len(queries), "dim": database.shape[1],
                           "stream_frames": len(frames), "repeats": repeats}  # fmt: skip
    for name, times in (("offline", offline), ("online", online)):
        median = {k: float(np.median(v)) for k, v in times.items()}
        out[name] = {"s_per_query": median, "ratio": {n: median[n] / median["frame"] for n in median if n != "frame"}}
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---- tables --------------------------------------------------------------------------------------


def _r1(hits: list[int]) -> float:
    return 100.0 * sum(hits) / len(hits)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean, sd = mean_sd(values)
    return f"{mean:.1f} ± {sd:.1f}"


def _pooled_sign_test(pairs: list[tuple[list[int], list[int]]]) -> str:
    plus = minus = 0
    for before, after in pairs:
        p, m, _ = sign_test(before, after)
        plus, minus = plus + p, minus + m
    return f"{plus}/{minus} (p {binomial_p(plus, minus):.2g})"


def tables(data: dict[str, Any]) -> str:
    """R@1 per model and length; what sequences and distillation give back; cost per query."""
    runs, lengths = data["runs"], [str(n) for n in data["lengths"]]
    seeds = sorted({r["seed"] for r in runs})
    degrades = list(dict.fromkeys(r["degrade"] for r in runs))
    images = {"none": "clean", **{d: d for d in degrades}}

    def teacher(level: str) -> dict[str, Any]:  # the same hits in every run that has the row: checked below
        row = "pretrained_clean" if level == "none" else f"pretrained_degraded@{level}"
        return next(r["rows"][row] for r in runs if row in r["rows"])

    for r in runs:
        for level in ("none", r["degrade"]):
            row = "pretrained_clean" if level == "none" else f"pretrained_degraded@{level}"
            if r["rows"][row] != teacher(level):
                raise SystemExit(f"the pretrained model's {row} differs between runs: it should not depend on the seed")

    def hits(row: dict[str, Any], n: str) -> list[int]:
        return row["frame"] if n == "frame" else row["sequence"][n]

    columns = ["frame", *lengths]
    lines = [f"R@1 (%), {data['test_places']} places; students: mean ± sd over seeds {seeds}", "",
             "| model | images | single frame | " + " | ".join(f"L = {n}" for n in lengths) + " |",
             "|---|---|---:|" + "---:|" * len(lengths)]  # fmt: skip
    for level, name in images.items():
        cells = [f"{_r1(hits(teacher(level), n)):.1f}" for n in columns]
        lines.append(f"| pretrained | {name} | " + " | ".join(cells) + " |")
    for degrade in degrades:
        for level in ("none", degrade):
            rows = [r["rows"][f"distilled@{level}"] for r in runs if r["degrade"] == degrade]
            cells = [_mean_sd([_r1(hits(x, n)) for x in rows]) for n in columns]
            lines.append(f"| distilled for {degrade} | {images[level]} | " + " | ".join(cells) + " |")
    lines += ["", "At each L: what the degradation takes from the pretrained model (clean − degraded) and how much "
              "of it the distilled student gives back (share, if it takes a point or more); 'sequences alone' is the "
              "pretrained model's degraded R@1 at L against its single-frame R@1 (share of the single-frame loss). "
              "Last column: student vs pretrained at the same L on the same degraded queries, queries only the "
              "student / only the pretrained model gets right, pooled over seeds, two-sided sign test.", "",
              "| degradation | L | pretrained clean | pretrained degraded | sequences alone | taken at this L | "
              "distilled | given back by distillation | student vs pretrained: +/− (p) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for degrade in degrades:
        clean, base = teacher("none"), teacher(degrade)
        single_loss = _r1(clean["frame"]) - _r1(base["frame"])
        students = [r["rows"][f"distilled@{degrade}"] for r in runs if r["degrade"] == degrade]
        for n in columns:
            c, d = _r1(hits(clean, n)), _r1(hits(base, n))
            alone = d - _r1(base["frame"])
            gains = [_r1(hits(s, n)) - d for s in students]
            share = f"{100 * alone / single_loss:.0f}%" if single_loss > 0 else "n/a"
            given = f"{100 * (sum(gains) / len(gains)) / (c - d):.0f}%" if c - d >= 1 else "n/a"
            test = _pooled_sign_test([(hits(base, n), hits(s, n)) for s in students])
            lines.append(f"| {degrade} | {'single frame' if n == 'frame' else n} | {c:.1f} | {d:.1f} | {alone:+.1f} "
                         f"({share}) | {c - d:.1f} | {_mean_sd([_r1(hits(s, n)) for s in students])} | "
                         f"{_mean_sd(gains)} ({given}) | {test} |")  # fmt: skip
    lines += ["", "Cost per query against the single-frame search, one thread, median of repeats: offline for all "
              "queries at once (FAISS flat, k = 1), online one frame at a time (the similarity row and its best match, "
              "against the same row through SequenceStream.push + top_k)", "",
              "| database × queries × dim | mode | single frame | " + " | ".join(f"L = {n}" for n in lengths) + " |",
              "|---|---|---:|" + "---:|" * len(lengths)]  # fmt: skip
    for size in data["cost"]:
        for mode in ("offline", "online"):
            ms = {k: 1000 * v for k, v in size[mode]["s_per_query"].items()}
            queries = size["queries"] if mode == "offline" else size["stream_frames"]
            cells = [f"{ms[n]:.2f} ms ({size[mode]['ratio'][n]:.1f}×)" for n in lengths]
            lines.append(f"| {size['database']} × {queries} × {size['dim']} | {mode} | {ms['frame']:.3f} ms | "
                         + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="the nordland_64x32 folder (summer/, winter/)")
    ap.add_argument("--out", type=Path, help="results JSON")
    ap.add_argument("--table", type=Path, help="only print the tables of this results JSON")
    ap.add_argument("--work", type=Path, default=None, help="generated data, runs and cache (default: next to --out)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="lite0-gem")
    ap.add_argument("--degrade", nargs="+", default=["jpeg10", "scale0.25+jpeg10"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--lengths", nargs="+", type=int, default=[1, 5, 10, 20])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
    ap.add_argument("--test-places", type=int, default=800)
    ap.add_argument("--train-every", type=int, default=2, help="keep every Nth training frame")
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (set OMP_NUM_THREADS the same)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats of the cost measurement")
    ap.add_argument("--cost-queries", type=int, default=552, help="queries timed against Nordland's full database size")
    ap.add_argument("--stream-frames", type=int, default=50, help="frames pushed one at a time in the online timing")
    args = ap.parse_args()
    if args.table:
        print(tables(json.loads(args.table.read_text())))
        return
    if args.data is None or args.out is None:
        ap.error("--data and --out are required (or --table RESULTS)")
    import faiss
    import torch

    from loqi_core.data.datasets import load_dataset

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    work = (args.work or args.out.with_suffix("")).resolve()
    train, test_dir = build_data(args.data, work / "data", args.test_places, args.train_every)
    ordered = stretch_layout(test_dir, work / "data" / "seqtest")
    test = load_dataset(f"folder:{ordered}?order=frame", "test")
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:  # seed-major: a grid cut short keeps whole seeds
        for degrade in args.degrade:
            job = {"method": args.method, "degrade": degrade, "seed": seed, "device": args.device, "train": str(train),
                   "test": str(ordered), "threads": args.threads, "steps": args.steps, "cache": str(work / "cache"),
                   "out": str(work / "runs" / f"{degrade}__seed{seed}")}  # fmt: skip
            run_dir = one_run(job)
            rows = match_run(run_dir, test, args.lengths)
            runs.append({"degrade": degrade, "seed": seed, "run": str(run_dir), "rows": rows})
    db, q = load_row(Path(runs[0]["run"]), "pretrained_clean", test)
    rng = np.random.default_rng(0)
    full_db = _unit(rng.normal(size=(FULL_NORDLAND[0], db.shape[1])))
    full_q = _unit(rng.normal(size=(args.cost_queries, db.shape[1])))
    costs = [cost(x, y, args.lengths, args.repeats, args.stream_frames) for x, y in ((db, q), (full_db, full_q))]
    data = {"args": {k: str(v) for k, v in vars(args).items()}, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "test_places": args.test_places, "lengths": args.lengths, "runs": runs, "cost": costs,
            "wall_s": time.perf_counter() - t0}  # fmt: skip
    args.out.write_text(json.dumps(data, indent=1))
    print(tables(data))


if __name__ == "__main__":
    main()
