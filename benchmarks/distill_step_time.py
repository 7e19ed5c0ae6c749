"""The demo's distillation step time, alone and next to one busy process, with the old and the new CPU defaults.

- before: 4 loader workers and torch's own thread count (the defaults until loqi fitted them to the machine);
- after: ``distill.num_workers`` and ``threads`` left to loqi (``loqi_core/util/cpus.py``: what
  ``os.sched_getaffinity`` allows, one CPU left to the rest of the machine).

Each cell is a fresh ``loqi distill`` process (lite0-gem, jpeg10, the demo training set, 32×64 views as ``loqi run``
on the demo uses, batch 16) without ``OMP_NUM_THREADS`` in its environment, as a user's shell would be. The step
time is the batch over the run's images/s, measured after the first logging interval (warm-up excluded). "busy"
runs one pure-Python busy loop on the same CPUs for the whole run. Cells are interleaved over ``--rounds``, and
the median is reported, so slow phases of a shared machine hit every cell alike. ``--cpus 0,1`` pins everything
(the run and the busy loop) to those CPUs, e.g. to reproduce a 2-core machine on a bigger one. Also reports
whether torch printed a warning at start (DataLoader's "suggested max number of worker").

    python benchmarks/distill_step_time.py --steps 30 --rounds 3 --out step_time.json
    python benchmarks/distill_step_time.py --cpus 0,1 --steps 30 --rounds 3 --out step_time.json   # on a big machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("before", "after")
CHILD = r"""
import json, sys, torch
from pathlib import Path
from loqi_core.config import resolve_run_config
from loqi_core.training.engine import distill
setting, out, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
overrides = {"model.method": "lite0-gem", "degrade": "jpeg10", "device": "cpu", "distill.train": "demo",
             "distill.view_size": [32, 64], "distill.max_steps": steps, "distill.log_every": 5,
             "distill.checkpoint_every": 10**6, "distill.tensorboard": False}
if setting == "before":
    overrides |= {"distill.num_workers": 4, "threads": torch.get_num_threads()}
distill(resolve_run_config(None, overrides), out)
"""


def one(setting: str, busy: bool, steps: int, cpus: list[int] | None, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin) if busy else None
    out = Path(tempfile.mkdtemp(dir=tmp))
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, setting, str(out / "run"), str(steps)], env=env,
                              capture_output=True, text=True, preexec_fn=pin)  # fmt: skip
        wall = time.perf_counter() - t0
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    s = json.loads((out / "run" / "summary.json").read_text())
    warned = "worker" in proc.stderr and "Warning" in proc.stderr
    return {"setting": setting, "busy": busy, "step_s": 16 / s["images_per_s"], "wall_s": wall, "torch_warning": warned,
            "workers": s["loader_workers"], "threads": s["torch_threads"], "load_avg_1min_after": os.getloadavg()[0]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. 0,1")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    cells = [(s, b) for b in (False, True) for s in SETTINGS]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for setting, busy in cells:
                runs.append(one(setting, busy, args.steps, cpus, Path(tmp)) | {"round": r})
                print(json.dumps(runs[-1]), flush=True)
    n_cpus = len(cpus) if cpus else len(os.sched_getaffinity(0))
    med = {c: statistics.median(x["step_s"] for x in runs if (x["setting"], x["busy"]) == c) for c in cells}
    args.out.write_text(json.dumps({"cpus": n_cpus, "steps": args.steps, "rounds": args.rounds, "runs": runs,
                                    "median_step_s": {f"{s}{'+busy' if b else ''}": v for (s, b), v in med.items()}}, indent=1))  # fmt: skip
    base = med[("after", False)]
    print(f"\n{n_cpus} CPUs, lite0-gem jpeg10 demo, batch 16, median of {args.rounds} rounds; times relative to 'after, alone'\n")
    print("| defaults | workers / threads | torch warning | alone | + one busy process |")
    print("|---|---|---|---|---|")
    for s in SETTINGS:
        first = next(x for x in runs if x["setting"] == s)
        warn = "yes" if any(x["torch_warning"] for x in runs if x["setting"] == s) else "no"
        print(f"| {s} | {first['workers']} / {first['threads']} | {warn} | {med[(s, False)] / base:.2f}× "
              f"({med[(s, False)]:.2f} s) | {med[(s, True)] / base:.2f}× ({med[(s, True)]:.2f} s) |")


if __name__ == "__main__":
    main()
