"""Distillation throughput: the engine's full step against the bare teacher-forward + student-forward/backward.

For each method, at its paper input size, in one process:

- bare: random normalised tensors already on the device; teacher forward (inference mode) + student forward
  and backward, with the engine's trainable layers, precision and memory format (the step's ceiling, DESIGN §7);
- full: ``loqi_core.training.engine.distill`` on a folder of generated JPEGs of that size: decoding and the degradation
  in the loader workers, uint8 transfer, preprocessing on the device, the method's default loss, gradient
  clipping, Adam, the scheduler and logging. Its images/s comes from the run's ``summary.json``, measured after
  the first logging interval (warm-up);
- loader: the engine's own training DataLoader alone (decode, view, degradation in the workers; no model), with
  the run's degradation and with none, so a full/bare shortfall can be traced to decoding or to the codec.

The ratio full/bare is the engine's efficiency (target on a GPU: at least 0.85). Weights are random (no
download); the speed does not depend on them.

    python benchmarks/distill_throughput.py --device cuda --batch 48 --steps 50
    python benchmarks/distill_throughput.py --device cpu --methods lite0-gem,mixvpr --batch 4 --steps 4

Offline, AnyLoc needs a vocabulary that is not a download: ``--set anyloc:model.aggregator_params.vocabulary=random``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

# The paper's input sizes (H, W) where the method itself keeps the image's own size.
PAPER_SIZES = {"netvlad": (480, 640), "anyloc": (224, 224), "lite0-gem": (256, 256), "lite0-netvlad": (256, 256)}


def input_size(method: str, plugins) -> tuple[int, int]:
    size = plugins.method(method)[0].preprocess.size
    return tuple(size) if size is not None else PAPER_SIZES.get(method, (224, 224))  # type: ignore[return-value]


def write_jpegs(folder: Path, n: int, size: tuple[int, int]) -> None:
    """``n`` smooth random JPEGs named in places of 4 (so losses that need places work too)."""
    from PIL import Image

    from loqi_core.testing.helpers import random_images

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(random_images(n, *size, seed=0)):
        east = 500000.0 + 100.0 * (i // 4)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"@{east:.1f}@4000000.0@@@@@@@{i:05d}@.jpg", quality=90)


def bare_step(config, size: tuple[int, int], batch: int, device, bf16: bool):
    """The bare step as a function: teacher forward (inference mode) + student forward/backward on random tensors
    already on the device, with the engine's trainable layers, precision and memory format."""
    import torch

    from loqi_core.hooks.manager import get_plugins
    from loqi_core.models.model import build_model
    from loqi_core.training.recipe import select_trainable, set_train_modes

    method = config.model.method
    spec = get_plugins().method(method)[0]
    student = build_model(method, weights="random", image_size=size, encoder_params=config.model.encoder_params,
                          aggregator_params=config.model.aggregator_params)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    select_trainable(student, spec.trainable, method)
    set_train_modes(student, spec.trainable, freeze_bn=True, dropout=False)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in student.encoder.modules())
    mode = config.distill.channels_last  # the engine's rule: "auto" = on for CNN encoders on CUDA
    on = mode == "on" or (mode == "auto" and device.type == "cuda" and convs > 3)
    fmt = torch.channels_last if on else torch.contiguous_format
    student.to(device, memory_format=fmt)
    teacher.to(device, memory_format=fmt)
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def step() -> None:
        with torch.inference_mode(), autocast():
            teacher(x)
        with autocast():
            latent, desc = student(x)
        (desc.float().pow(2).sum() + latent.float().mean()).backward()
        student.zero_grad(set_to_none=True)

    step.student, step.teacher, step.channels_last = student, teacher, on  # type: ignore[attr-defined]
    return step


def bare_rate(config, size: tuple[int, int], batch: int, steps: int, warmup: int, device, bf16: bool, clock=time.perf_counter) -> float:
    """Images/s of teacher forward + student forward/backward on tensors already on the device (``clock``:
    ``time.process_time`` counts this process's CPU seconds, which other jobs on a shared CPU do not inflate)."""
    import torch

    step = bare_step(config, size, batch, device, bf16)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = clock()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (clock() - t0)


def run_config(method: str, size: tuple[int, int], batch: int, steps: int, warmup: int, args, images: Path):
    """The benchmark's RunConfig for one method, with the ``--set`` overrides that name it (or no method)."""
    from loqi_core.config import parse_override, resolve_run_config

    overrides = {
        "model.method": method, "model.weights": "random", "model.image_size": list(size), "degrade": args.degrade,
        "device": args.device, "distill.train": f"folder:{images}", "distill.batch_size": batch,
        "distill.places_per_batch": max(2, batch // 4), "distill.images_per_place": 4,
        "distill.max_steps": warmup + steps, "distill.log_every": warmup, "distill.checkpoint_every": 10**9,
        "distill.num_workers": args.workers, "distill.tensorboard": False, "distill.view_size": list(size),
        "distill.augment": False, "distill.precision": args.precision,
    }  # fmt: skip
    for text in args.set:
        target, _, assignment = text.rpartition(":") if ":" in text.split("=", 1)[0] else ("", "", text)
        if target in ("", method):
            key, value = parse_override(assignment)
            overrides[key] = value
    return resolve_run_config(None, overrides)


def full_rate(config, work: Path) -> dict:
    """Images/s of the engine's own step (``distill``), from its summary.json."""
    from loqi_core.training.engine import distill

    out = work / f"run-{config.model.method}"
    distill(config, out)
    return json.loads((out / "summary.json").read_text())


def loader_rate(config, work: Path) -> float:
    """Images/s of the engine's training DataLoader alone: the same dataset, plan, views and workers as ``distill``.

    The batches the workers prefetch (4 per worker) are drained first, so the rate is the steady production rate."""
    from loqi_core.hooks.manager import get_plugins
    from loqi_core.training.dist import DistEnv
    from loqi_core.training.engine import _Trainer
    from loqi_core.training.recipe import encoder_spec, training_loss
    from loqi_core.util.devices import resolve_device

    workers = max(1, config.distill.num_workers)
    drain, measured = 4 * workers + 2, max(16, 8 * workers)
    config = config.model_copy(update={"distill": config.distill.model_copy(update={"max_steps": drain + measured})})
    plugins = get_plugins()
    trainer = _Trainer(config, work / "loader-only", "distill", False, plugins, DistEnv(), resolve_device(config.device))
    trainer.spec = encoder_spec(config, plugins)
    trainer._build_data(training_loss(config, "distill", trainer.spec, plugins))
    batches = iter(trainer._loader(0))
    for _ in range(drain):
        next(batches)
    t0, images = time.perf_counter(), 0
    for _ in range(measured):
        images += len(next(batches)["clean"])
    return images / (time.perf_counter() - t0)


def main() -> None:
    import torch

    from loqi_core.hooks.manager import get_plugins
    from loqi_core.util.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--methods", help="comma-separated; default: every installed method")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 48 on cuda, 4 on cpu)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default 50 on cuda, 4 on cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10 on cuda, 2 on cpu)")
    parser.add_argument("--degrade", default="jpeg10")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: CPU cores up to 16 on cuda, 1 on cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="config override, for one method or all, e.g. anyloc:model.aggregator_params.vocabulary=random")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    batch = args.batch or (48 if cuda else 4)
    steps = args.steps or (50 if cuda else 4)
    warmup = args.warmup or (10 if cuda else 2)
    args.workers = args.workers if args.workers is not None else (min(16, os.cpu_count() or 1) if cuda else 1)
    plugins = get_plugins()
    methods = args.methods.split(",") if args.methods else plugins.methods()
    device = resolve_device(args.device)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            size = input_size(method, plugins)
            images = Path(tmp) / f"images-{size[0]}x{size[1]}"
            if not images.exists():
                write_jpegs(images, max(4 * batch, 32), size)
            config = run_config(method, size, batch, steps, warmup, args, images)
            full = full_rate(config, Path(tmp))
            bare = bare_rate(config, size, batch, steps, warmup, device, bf16)
            loader = loader_rate(config, Path(tmp))
            loader_clean = loader_rate(config.model_copy(update={"degrade": "none"}), Path(tmp))
            row = {
                "method": method, "input": f"{size[0]}x{size[1]}", "batch": batch, "precision": "bf16" if bf16 else "fp32",
                "bare_img_s": round(bare, 2), "full_img_s": round(full["images_per_s"], 2),
                "ratio": round(full["images_per_s"] / bare, 3), "loss": full["loss"],
                "loader_img_s": round(loader, 1), "loader_no_degradation_img_s": round(loader_clean, 1),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{name}, degradation {args.degrade}, {steps} measured steps after {warmup} warm-up, {args.workers} workers\n")
    print(f"| method | input | batch | precision | loss | bare img/s | full img/s | full/bare | loader img/s ({args.degrade}) | loader img/s (none) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['input']} | {r['batch']} | {r['precision']} | {r['loss']} | {r['bare_img_s']} | "
              f"{r['full_img_s']} | {r['ratio']:.2f} | {r['loader_img_s']} | {r['loader_no_degradation_img_s']} |")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
