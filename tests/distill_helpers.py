"""Shared fixtures for the distillation engine tests: generated image folders and tiny-method configs.

Also a script entry point (``python tests/distill_helpers.py CONFIG_JSON OUT [--kill-at-step N] [--slow-reader]``) so the
resume and torchrun tests can run the engine in a child process, with the tiny method registered.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def write_images(folder: Path, n: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """``n`` smooth random PNG images without positions (a label-free training set)."""
    from PIL import Image

    from loqi_core.testing.helpers import random_images

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(random_images(n, *size, seed=seed)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"img{i:03d}.png")
    return folder


def write_places(folder: Path, places: int, per_place: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """Images named ``@east@north@...`` in groups ``per_place`` within 2 m, places 100 m apart."""
    from PIL import Image

    from loqi_core.testing.helpers import random_images

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for p, base in enumerate(random_images(places, *size, seed=seed)):
        arr = base.permute(1, 2, 0).numpy().astype(np.float64)
        for k in range(per_place):
            img = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
            east = 500000.0 + 100.0 * p + rng.uniform(-1, 1)
            Image.fromarray(img).save(folder / f"@{east:.2f}@4000000.00@33@T@@@@@p{p:02d}_{k}@.png")
    return folder


def tiny_config(train: Path, **distill: Any) -> dict[str, Any]:
    """A RunConfig dict for the tiny method on CPU: random init, blur5, lr 3e-4; the student is the last step's
    weights (no moving average: these tests check one step's state; the average has tests of its own)."""
    base = {"train": f"folder:{train}", "batch_size": 8, "lr": 3e-4, "num_workers": 0, "log_every": 2, "tensorboard": False,
            "ema": None}  # fmt: skip
    base.update(distill)
    return {"model": {"method": "tiny", "weights": "random"}, "degrade": "blur5", "device": "cpu", "seed": 3, "distill": base}


def _main(argv: list[str]) -> None:
    import os
    import signal
    import time

    from loqi_core.config import RunConfig
    from loqi_core.testing.helpers import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin
    from loqi_core.training.engine import _Trainer, distill

    config = RunConfig.model_validate(json.loads(Path(argv[0]).read_text()))
    out = Path(argv[1])
    mode = "finetune" if "--finetune" in argv else "distill"
    if "--kill-at-step" in argv:
        kill_at = int(argv[argv.index("--kill-at-step") + 1])
        step = _Trainer._step

        def dying_step(self, batch):  # SIGKILL in the middle of a step, as a crash or an OOM kill would
            if batch["step"] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(self, batch)

        _Trainer._step = dying_step  # type: ignore[method-assign]
    if "--slow-reader" in argv:  # ranks other than 0 read the merged descriptors late, as on a busy machine
        from loqi_core.evaluation import engine

        load = engine.load_descriptors

        def late_load(path):
            if engine.dist_rank_world()[0] != 0:
                time.sleep(1.0)
            return load(path)

        engine.load_descriptors = late_load  # type: ignore[assignment]
    if "--print-hash" in argv:  # every rank prints a digest of its own student after the final checkpoint
        save = _Trainer._save

        def reporting_save(self, done, target):
            result = save(self, done, target)
            if target.name == "final":
                total = sum(float(v.double().sum()) for v in self.student.state_dict().values())
                sys.stdout.write(f"RANK{self.env.rank} {total:.12f}\n")  # one write: ranks share the pipe
                sys.stdout.flush()
            return result

        _Trainer._save = reporting_save  # type: ignore[method-assign]
    with isolated_plugins(("tiny", tiny_plugin)):
        distill(config, out, mode=mode, resume="--resume" in argv)


if __name__ == "__main__":
    _main(sys.argv[1:])
