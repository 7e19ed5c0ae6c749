"""Does distillation recover what a degradation takes, on real photos? Teacher clean / teacher degraded / student.

Builds, from the Nordland frames (``--data``: the 64×32 copy, summer and winter), a split by place:

- test set (gmberton layout): database = summer, queries = winter, of ``--test-places`` places in alternate
  stretches of 200 frames, enlarged to 256×128 (bicubic); positions (0, 10·frame) m, positives within 25 m;
- training folder (label-free, plain names): summer and winter frames of the other stretches (10 frames kept
  away from every test stretch), every second frame, half at the native 64×32, half enlarged to 160×80, so the
  training images differ in size from each other and from the test images.

Each run is ``loqi run`` itself (``runner.run_experiment``: teacher clean, teacher degraded, distil, student
degraded) with the method's defaults and the setting's overrides; ``--jobs N`` runs N in parallel processes
(threads split evenly); every run degrades the test images with seed 0, so the teacher's rows come from the cache
and every seed's student meets the same queries. Per degradation, setting and seed it reports R@1/5/10 of the three
rows, the R@1 gain, the share of the degradation's loss recovered and a paired per-query sign test at R@1 (student
vs teacher on the same degraded queries: queries only the student gets right against queries only the teacher gets
right, two-sided binomial p); then the same against **the teacher's map** (the deployment whose map the teacher
indexed once from clean images: the degraded queries encoded by the teacher, then by the student, searched in the
teacher's descriptors of the clean database). Over seeds: the mean ± sample sd of the gains and the sign tests
pooled over seeds; the second table pairs each setting with ``--versus`` (default: "default") on the same seeds
and queries. Writes every run to ``--out`` (JSON) and prints the Markdown tables.

    # the default settings, 5 seeds, both degradations (CPU: 10 runs of about 6 minutes on 2 quiet cores)
    python benchmarks/distill_gain.py --data ../shared/data/nordland_64x32 --device cpu --test-places 400 \
        --seeds 0 1 2 3 4 --jobs 2 --threads 1 --out gain.json
    # (on a machine shared with other jobs add --threads 1: two spinning torch threads there ran 10x slower)
    # the full grid (defaults + one-factor ablation of lr, view size and augmentation, 3 seeds) on a GPU machine
    python benchmarks/distill_gain.py --data nordland_64x32 --device cuda --jobs 12 --seeds 0 1 2 --ablation \\
        --out distill_gain_grid.json      # 72 runs, seed by seed; each finished run is saved at once
    # the tables again from a results JSON (e.g. a grid cut short by a time limit)
    python benchmarks/distill_gain.py --table distill_gain_grid.json
    # R@1 of every checkpoint the runs kept (does the student still move at the end of training?)
    python benchmarks/distill_gain.py --table gain.json --checkpoints --work gain
    # the paired sign tests (R@1, R@5, R@10) of an existing `loqi run` directory (e.g. the README demo's runs/demo)
    python benchmarks/distill_gain.py --paired runs/demo
    # tiny smoke run
    python benchmarks/distill_gain.py --data ../shared/data/nordland_64x32 --device cpu --test-places 40 \\
        --train-every 20 --steps 3 --seeds 0 --degrade jpeg10 --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from loqi_core.report.seeds import binomial_p, mean_sd, sign_test

TEST_SIZE = (256, 128)  # (width, height) of the test images
TRAIN_ENLARGED = (160, 80)
BLOCK = 200  # frames per stretch; even stretches test, odd ones train
MARGIN = 10  # training frames kept this far from any test stretch

# name -> (description, distill overrides); "default" is what loqi does with no flag
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("method defaults (lr 2e-4, views at the test scale, augment, moving average 0.95)", {}),
    "no-ema": ("the weights of the last step, no moving average (the default before the seed study)", {"distill.ema": None}),
    "lr5e-5": ("lr 5e-5", {"distill.lr": 5e-5}),
    "lr1e-4": ("lr 1e-4", {"distill.lr": 1e-4}),
    "lr4e-4": ("lr 4e-4", {"distill.lr": 4e-4}),
    "view32x64": ("views 32×64 (the native Nordland size)", {"distill.view_size": [32, 64]}),
    "view64x128": ("views 64×128", {"distill.view_size": [64, 128]}),
    "view144x288": ("views 144×288 (288 long side)", {"distill.view_size": [144, 288]}),
    "lr1e-3": ("lr 1e-3", {"distill.lr": 1e-3}),
    "no-augment": ("no augmentation", {"distill.augment": False}),
    "no-clip": ("no gradient-norm clipping (the reference clips nothing)", {"distill.clip_grad_norm": None}),
    "steps360": ("360 steps (3x the default)", {"distill.max_steps": 360}),
    "old": ("before: lr 5e-5, native views, no augment, no moving average",
            {"distill.lr": 5e-5, "distill.view_size": [32, 64], "distill.augment": False, "distill.ema": None}),
    "cosine": ("cosine schedule to 0, 12 warm-up steps", {"distill.schedule": "cosine", "distill.warmup_steps": 12}),
    "batch32": ("batches of 32 images (2x)", {"distill.batch_size": 32}),
    "early": ("only the stem and blocks 0-2 train; blocks 3-5 and GeM stay the teacher's",
              {"distill.trainable": ["encoder.conv_stem", "encoder.bn1", "encoder.blocks.0", "encoder.blocks.1", "encoder.blocks.2"]}),
    "val240": ("240 steps, heldout validation every 20, the best kept", {"distill.max_steps": 240, "distill.val": "heldout", "distill.val_every": 20}),
}  # fmt: skip
ABLATION = ["default", "lr5e-5", "lr1e-4", "lr4e-4", "lr1e-3", "view32x64", "view64x128", "view144x288", "no-augment",
            "no-clip", "steps360", "old"]


def _frames(season: Path) -> dict[int, Path]:
    return {int(p.stem.split("-")[1]) // 10: p for p in sorted(season.glob("images-*.png"))}


def build_data(src: Path, work: Path, test_places: int, train_every: int) -> tuple[Path, Path]:
    """Write the test set and the training folder under ``work`` (once; reused when present)."""
    from PIL import Image

    test, train = work / "test", work / "train"
    done = work / "done.json"
    key = {"test_places": test_places, "train_every": train_every}
    if done.exists() and json.loads(done.read_text()) == key:
        return train, test
    shutil.rmtree(test, ignore_errors=True)
    shutil.rmtree(train, ignore_errors=True)
    summer, winter = _frames(src / "summer"), _frames(src / "winter")
    frames = sorted(set(summer) & set(winter))
    if not frames:
        raise SystemExit(f"--data {src}: no summer/ and winter/ images-NNNNN.png frames there")
    test_frames = [f for f in frames if (f // BLOCK) % 2 == 0][:test_places]
    last = max(test_frames)
    train_frames = [
        f for f in frames
        if (f // BLOCK) % 2 == 1 and MARGIN <= f % BLOCK < BLOCK - MARGIN and f < last + BLOCK
    ][::train_every]  # fmt: skip
    for part, season in (("database", summer), ("queries", winter)):
        folder = test / "images" / "test" / part
        folder.mkdir(parents=True, exist_ok=True)
        for f in test_frames:
            img = Image.open(season[f]).convert("RGB").resize(TEST_SIZE, Image.BICUBIC)
            img.save(folder / f"@0.00@{10.0 * f:.2f}@@@@@{f}@@@@@@@@.png")
    train.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(train_frames):
        for name, season in (("summer", summer), ("winter", winter)):
            img = Image.open(season[f]).convert("RGB")
            if (i + (name == "winter")) % 2:
                img = img.resize(TRAIN_ENLARGED, Image.BICUBIC)
            img.save(train / f"{name}_{f:05d}.png")
    done.write_text(json.dumps(key))
    return train, test


def _correct_at_1(run_dir: Path, row: str, n: int = 1) -> list[int]:
    """Per query: 1 when a positive is among the top ``n`` (from the run's predictions CSV)."""
    (path,) = (run_dir / "predictions").glob(f"*__{row}.csv")
    with path.open(newline="") as f:
        return [int("1" in r["top_k_correct"][:n]) for r in csv.DictReader(f)]


def _hits(result: Any) -> list[int]:
    """Per query of an EvalResult: 1 when its first-ranked database image is a positive."""
    return [int(int(row[0]) in set(gt.tolist())) for row, gt in zip(result.predictions, result.ground_truth)]


def against_teachers_map(config: Any, run_dir: Path, test_folder: str) -> dict[str, Any]:
    """The deployment whose map the teacher indexed once from clean images: degraded queries encoded by the teacher,
    then by the student, searched in the teacher's descriptors of the clean database (descriptors from the cache)."""
    from loqi_core.data.datasets import load_dataset
    from loqi_core.evaluation.cache import EvalCache
    from loqi_core.evaluation.engine import evaluate
    from loqi_core.models.model import build_model

    test = load_dataset(f"folder:{test_folder}", "test")
    teacher = build_model(config.model.method)
    student = build_model(config.model.method, weights=str(run_dir / "distill"))
    kw = dict(config=config.eval, clean_database=True, seed=config.eval.seed, device=config.device,
              cache=EvalCache(config.eval.cache_dir))  # fmt: skip
    t = evaluate(teacher, test, config.degrade, **kw)
    s = evaluate(student, test, config.degrade, database_model=teacher, **kw)
    degraded_map = evaluate(student, test, config.degrade, database_model=teacher, **{**kw, "clean_database": False})
    return {"teacher": t.recalls, "student": s.recalls, "hits_teacher": _hits(t), "hits_student": _hits(s),
            "student_vs_degraded_map": degraded_map.recalls, "hits_student_vs_degraded_map": _hits(degraded_map)}


def one_run(job: dict[str, Any]) -> dict[str, Any]:
    """One ``loqi run`` in this process; returns its recalls and per-query R@1 hits, symmetric and against the
    teacher's clean map."""
    import torch

    from loqi_core.config import resolve_run_config
    from loqi_core.experiments.runner import run_experiment

    torch.set_num_threads(job["threads"])
    overrides = {
        "model.method": job["method"], "degrade": job["degrade"], "seed": job["seed"], "device": job["device"],
        "distill.train": f"folder:{job['train']}", "eval.test": [f"folder:{job['test']}"], "out": job["out"],
        "eval.recall": [1, 5, 10], "eval.grid_queries": 0, "eval.cache_dir": job["cache"], "eval.seed": 0,
        "distill.tensorboard": False, "threads": job["threads"], **SETTINGS[job["setting"]][1],
        "distill.num_workers": 0 if job["device"] == "cpu" else max(1, job["threads"] - 1),  # the job's share of CPUs
    }  # fmt: skip
    overrides["eval.num_workers"] = overrides["distill.num_workers"]
    if job["steps"] and "distill.max_steps" not in SETTINGS[job["setting"]][1]:
        overrides["distill.max_steps"] = job["steps"]
    config = resolve_run_config(None, overrides)
    t0 = time.perf_counter()
    run_dir = Path(job["out"])
    if not (run_dir / "metrics.json").exists():
        run_experiment(config, echo=lambda _: None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (data,) = metrics["datasets"].values()
    rows = {k: v for k, v in data["rows"].items()}
    return {
        **{k: job[k] for k in ("setting", "degrade", "seed")},
        "recalls": rows, "wall_s": time.perf_counter() - t0,
        "hits_teacher": _correct_at_1(run_dir, "pretrained_degraded"), "hits_student": _correct_at_1(run_dir, "distilled"),
        "teachers_map": against_teachers_map(config, run_dir, job["test"]),
        "view_size": json.loads((run_dir / "distill" / "config.json").read_text())["distill"]["view_size"],
        "lr": config.distill.lr, "augment": config.distill.augment, "steps": config.distill.max_steps,
    }  # fmt: skip


def _gains(r: dict[str, Any]) -> tuple[float, float, float]:
    """(symmetric Δ R@1, share of the loss recovered, Δ R@1 against the teacher's clean map) of one run."""
    c, t, s = (r["recalls"][k]["R@1"] for k in ("pretrained_clean", "pretrained_degraded", "distilled"))
    m = r["teachers_map"]
    return s - t, (s - t) / (c - t) if c > t else float("nan"), m["student"]["R@1"] - m["teacher"]["R@1"]


def table(results: list[dict[str, Any]]) -> str:
    """Per degradation and setting: a row per seed, then the mean ± sd over seeds and the sign tests pooled over them."""
    lines = [
        "| degradation | setting | seed | teacher clean R@1/5/10 | teacher degraded | student degraded | Δ R@1 | recovered "
        "| sign test +/− (p) | teacher's map: teacher queries R@1 | student queries | Δ R@1 | sign test +/− (p) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda r: f"{r['R@1']:.1f} / {r['R@5']:.1f} / {r['R@10']:.1f}"  # noqa: E731
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["degrade"], list(SETTINGS).index(r["setting"]), r["seed"])):
        groups.setdefault((r["degrade"], r["setting"]), []).append(r)
    for (degrade, setting), runs in groups.items():
        pooled = [0, 0, 0, 0]
        for r in runs:
            c, t, s = (r["recalls"][k] for k in ("pretrained_clean", "pretrained_degraded", "distilled"))
            gain, share, asym = _gains(r)
            m = r["teachers_map"]
            plus, minus, p = sign_test(r["hits_teacher"], r["hits_student"])
            a_plus, a_minus, a_p = sign_test(m["hits_teacher"], m["hits_student"])
            pooled = [x + y for x, y in zip(pooled, (plus, minus, a_plus, a_minus))]
            recovered = f"{100 * share:.0f}%" if not math.isnan(share) else "n/a"
            lines.append(f"| {degrade} | {setting} | {r['seed']} | {fmt(c)} | {fmt(t)} | {fmt(s)} | {gain:+.1f} | {recovered} "
                         f"| {plus}/{minus} ({p:.2g}) | {m['teacher']['R@1']:.1f} | {m['student']['R@1']:.1f} | {asym:+.1f} "
                         f"| {a_plus}/{a_minus} ({a_p:.2g}) |")  # fmt: skip
        if len(runs) > 1:
            (g, g_sd), (a, a_sd) = (mean_sd([_gains(r)[i] for r in runs]) for i in (0, 2))
            share = sum(_gains(r)[1] for r in runs) / len(runs)
            lines.append(f"| {degrade} | {setting} | **{len(runs)} seeds: mean ± sd** | | | | **{g:+.2f} ± {g_sd:.2f}** "
                         f"| **{100 * share:.0f}%** | pooled {pooled[0]}/{pooled[1]} ({binomial_p(*pooled[:2]):.2g}) | | "
                         f"| **{a:+.2f} ± {a_sd:.2f}** | pooled {pooled[2]}/{pooled[3]} ({binomial_p(*pooled[2:]):.2g}) |")  # fmt: skip
    return "\n".join(lines)


def seed_pairs(results: list[dict[str, Any]]) -> str:
    """Is one seed's student really better than another's? Per degradation and setting, the pair of seeds whose students
    differ most on the same degraded queries (queries only one of them finds at rank 1; sign test), symmetric and
    against the teacher's map: a spread that no pair shows beyond noise is the noise of which queries flip."""
    lines = ["| degradation | setting | seeds | most different pair: only a / only b (p) | teacher's map: most different pair (p) |",
             "|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["degrade"], list(SETTINGS).index(r["setting"]), r["seed"])):
        groups.setdefault((r["degrade"], r["setting"]), []).append(r)
    for (degrade, setting), runs in groups.items():
        if len(runs) < 2:
            continue
        cells = []
        for hits in (lambda x: x["hits_student"], lambda x: x["teachers_map"]["hits_student"]):
            a, b, (plus, minus, p) = min(((a, b, sign_test(hits(b), hits(a))) for i, a in enumerate(runs) for b in runs[i + 1 :]),
                                         key=lambda t: t[2][2])  # fmt: skip
            cells.append(f"seed {a['seed']} vs {b['seed']}: {plus}/{minus} ({p:.2g})")
        lines.append(f"| {degrade} | {setting} | {len(runs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def checkpoints_table(results: list[dict[str, Any]], work: Path, device: str) -> str:
    """R@1 of every checkpoint a run kept (``distill/checkpoints/step-*`` and the final one) on the degraded test set:
    does the student's recall still move between the last checkpoints (the end of training as a source of spread)?"""
    from loqi_core.data.datasets import load_dataset
    from loqi_core.evaluation.cache import EvalCache
    from loqi_core.evaluation.engine import evaluate
    from loqi_core.models.model import build_model

    test = load_dataset(f"folder:{work / 'data' / 'test'}", "test")
    cache = EvalCache(work / "cache")
    lines = ["| degradation | setting | seed | R@1 by step (student, database and queries degraded) |", "|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["degrade"], list(SETTINGS).index(r["setting"]), r["seed"])):
        folder = work / "runs" / f"{r['degrade']}__{r['setting']}__seed{r['seed']}" / "distill" / "checkpoints"
        cells = []
        for ckpt in sorted(folder.glob("step-*")) + [folder / "final"]:
            model = build_model("lite0-gem", weights=str(ckpt))
            step = json.loads((ckpt / "model.json").read_text())["train_step"]
            recall = evaluate(model, test, r["degrade"], config=None, seed=0, device=device, cache=cache).recalls["R@1"]
            cells.append(f"{step}: {recall:.2f}")
        lines.append(f"| {r['degrade']} | {r['setting']} | {r['seed']} | {'; '.join(cells)} |")
    return "\n".join(lines)


def comparison(results: list[dict[str, Any]], versus: str = "default") -> str:
    """Per degradation and setting: mean R@1 gain over seeds (± sample sd), symmetric and against the teacher's clean
    map, and, against ``versus`` on the same seeds, the queries only this setting's student gets right / only
    ``versus``'s, pooled over seeds (sign test)."""
    lines = [
        f"| degradation | setting | seeds | mean Δ R@1 (± sd) | sd / mean | mean recovered | vs {versus}: +/− queries (p) "
        f"| teacher's map: mean Δ R@1 (± sd) | vs {versus}: +/− queries (p) | teacher's degraded map: mean Δ R@1 (± sd), "
        "pooled +/− vs the teacher (p) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["degrade"], r["setting"], r["seed"]): r for r in results}
    for degrade in dict.fromkeys(r["degrade"] for r in results):
        for setting in [s for s in SETTINGS if any(k[:2] == (degrade, s) for k in by)]:
            runs = [r for k, r in sorted(by.items()) if k[:2] == (degrade, setting)]
            (mean, sd), (a_mean, a_sd) = (mean_sd([_gains(r)[i] for r in runs]) for i in (0, 2))
            share = sum(_gains(r)[1] for r in runs) / len(runs)
            versus_cells = ["", ""]
            base = [(by.get((degrade, versus, r["seed"])), r) for r in runs]
            if setting != versus and all(b for b, _ in base):
                for i, hits in enumerate((lambda x: x["hits_student"], lambda x: x["teachers_map"]["hits_student"])):
                    plus = minus = 0
                    for b, r in base:
                        p_, m_, _ = sign_test(hits(b), hits(r))
                        plus, minus = plus + p_, minus + m_
                    versus_cells[i] = f"{plus}/{minus} ({binomial_p(plus, minus):.2g})"
            ratio = f"{sd / mean:.2f}" if mean > 0 else "n/a"
            # the student's degraded queries against the teacher's degraded database (loqi run's distilled_queries
            # row under the paper's protocol), against the teacher on both sides
            d_gains = [r["teachers_map"]["student_vs_degraded_map"]["R@1"] - r["recalls"]["pretrained_degraded"]["R@1"]
                       for r in runs]  # fmt: skip
            d_mean, d_sd = mean_sd(d_gains)
            tests = [sign_test(r["hits_teacher"], r["teachers_map"]["hits_student_vs_degraded_map"]) for r in runs]
            d_plus, d_minus = sum(t[0] for t in tests), sum(t[1] for t in tests)
            lines.append(f"| {degrade} | {setting} | {len(runs)} | {mean:+.2f} (± {sd:.2f}) | {ratio} | {100 * share:.0f}% "
                         f"| {versus_cells[0]} | {a_mean:+.2f} (± {a_sd:.2f}) | {versus_cells[1]} "
                         f"| {d_mean:+.2f} (± {d_sd:.2f}), {d_plus}/{d_minus} ({binomial_p(d_plus, d_minus):.2g}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="the nordland_64x32 folder (summer/, winter/)")
    ap.add_argument("--out", type=Path, help="results JSON")
    ap.add_argument("--paired", type=Path, help="only print the R@1 sign test of this `loqi run` directory")
    ap.add_argument("--table", type=Path, help="only print the tables of this results JSON")
    ap.add_argument("--checkpoints", action="store_true", help="with --table: R@1 of every checkpoint each run kept")
    ap.add_argument("--work", type=Path, default=None, help="generated data, runs and cache (default: next to --out)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--method", default="lite0-gem")
    ap.add_argument("--degrade", nargs="+", default=["jpeg10", "scale0.25+jpeg10"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS), help="default: just 'default'")
    ap.add_argument("--ablation", action="store_true", help="one-factor ablation: " + ", ".join(ABLATION))
    ap.add_argument("--versus", default="default", choices=list(SETTINGS), help="the setting the others are paired with")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the method's)")
    ap.add_argument("--test-places", type=int, default=800)
    ap.add_argument("--train-every", type=int, default=2, help="keep every Nth training frame")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the CPUs / jobs)")
    args = ap.parse_args()
    if args.paired:
        for n in (1, 5, 10):
            teacher, student = (_correct_at_1(args.paired, row, n) for row in ("pretrained_degraded", "distilled"))
            plus, minus, p = sign_test(teacher, student)
            print(f"R@{n}, distilled vs pretrained on the degraded queries: {plus} only distilled right, {minus} "
                  f"only pretrained right; two-sided sign test p = {p:.3g}")
        return
    if args.table:
        results = json.loads(args.table.read_text())["results"]
        if args.checkpoints:
            print(checkpoints_table(results, args.work or args.table.with_suffix(""), args.device))
            return
        print(table(results) + "\n\n" + seed_pairs(results) + "\n\n" + comparison(results, args.versus))
        return
    if args.data is None or args.out is None:
        ap.error("--data and --out are required (or --paired RUN_DIR)")
    work = args.work or args.out.with_suffix("")
    train, test = build_data(args.data, work / "data", args.test_places, args.train_every)
    settings = args.settings or (ABLATION if args.ablation else ["default"])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = args.threads or max(1, cpus // args.jobs)
    jobs = [
        {"setting": s, "degrade": d, "seed": seed, "method": args.method, "device": args.device, "steps": args.steps,
         "train": str(train), "test": str(test), "threads": threads,
         "out": str(work / "runs" / f"{d}__{s}__seed{seed}"),
         "cache": str(work / "cache")}  # cache files are written to a per-process name and renamed: safe to share
        for seed in args.seeds for d in args.degrade for s in settings  # seed-major: a cut-short grid has whole seeds
    ]  # fmt: skip
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []

    def save() -> None:  # after every run, so that a grid stopped by a time limit keeps what it measured
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": time.perf_counter() - t0,
                                        "test_places": args.test_places, "results": results}, indent=1))  # fmt: skip

    if args.jobs == 1:
        for j in jobs:
            results.append(one_run(j))
            save()
    else:
        import multiprocessing

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(one_run, j) for j in jobs]):
                results.append(future.result())
                save()
    print(table(results) + "\n\n" + seed_pairs(results) + "\n\n" + comparison(results, args.versus))


if __name__ == "__main__":
    main()
