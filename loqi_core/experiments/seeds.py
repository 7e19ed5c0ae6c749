"""One experiment over several training seeds (``loqi run --seeds 0,1,2``, ``loqi sweep --seeds ...``).

Each seed's run goes to ``<out>/seed-<S>/``, a complete run directory; every run degrades the test images with the
same seed (``eval.seed``, the first training seed unless given), so the teacher's rows are computed once and read
from the cache after, and every student meets the same queries (a paired comparison). ``<out>`` then gets the
report over seeds: each seed beside the mean and the spread (``loqi_core.report.seeds``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from loqi_core.config import RunConfig
from loqi_core.experiments.runner import default_run_dir
from loqi_core.report.seeds import write_seeds_report


def over_seeds(
    config: RunConfig, seeds: Sequence[int], kind: str, run_one: Callable[[RunConfig], Path],
    echo: Callable[[str], None] = print,
) -> Path:  # fmt: skip
    """Run ``run_one`` once per seed into ``<out>/seed-<S>/`` and write the report over seeds into ``<out>``."""
    out = Path(config.out) if config.out is not None else default_run_dir(kind, config)
    eval_seed = config.eval.seed if config.eval.seed is not None else seeds[0]
    runs = []
    for seed in seeds:
        echo(f"\n== seed {seed} ({len(runs) + 1} of {len(seeds)}): {out / f'seed-{seed}'}")
        cfg = config.model_copy(update={"seed": seed, "out": out / f"seed-{seed}",
                                        "eval": config.eval.model_copy(update={"seed": eval_seed})})  # fmt: skip
        runs.append(run_one(cfg))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 writes
        write_seeds_report(out, dict(zip(seeds, runs)), eval_seed)
        echo("\n" + (out / "results.md").read_text())
        echo(f"report over seeds {', '.join(map(str, seeds))}: {out}")
    return out
