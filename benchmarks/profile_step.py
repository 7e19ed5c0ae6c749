"""Where a method's bare distillation step spends its time: a torch.profiler trace of the step that
``distill_throughput.py`` times (teacher forward + student forward/backward on tensors on the device), summed
per module class (forward) and per operator (forward and backward), with the step's images/s beside it.

Run by hand (never in unit tests)::

    python benchmarks/profile_step.py --method cricavpr --device cuda --batch 48      # CricaVPR on a GPU
    python benchmarks/profile_step.py --method cricavpr --device cpu --batch 2 --size 56x56 \\
        --set model.encoder_params.depth=2                                             # a quick CPU check

Per module class: the time inside every module of that class during the forward passes (nested classes count
in each: a block's time includes its adapter's). Per operator: self time, so the rows add up to the step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from distill_throughput import bare_step, input_size, run_config


def label_modules(model, classes: set[str]) -> list:
    """Open a profiler range named after the module's class around each forward of the given classes."""
    import torch

    handles = []
    for module in model.modules():
        name = type(module).__name__
        if name in classes:
            def enter(m, args, name=name):
                m._range = torch.profiler.record_function(f"module::{name}")
                m._range.__enter__()

            def leave(m, args, out):
                m._range.__exit__(None, None, None)

            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from loqi_core.hooks.manager import get_plugins
    from loqi_core.util.devices import resolve_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="cricavpr")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--size", default=None, help="HxW (default: the method's input size)")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps, after as many warm-up steps")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--top", type=int, default=25, help="operators listed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, e.g. distill.channels_last=off")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.degrade, args.workers = "none", 0
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cuda)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else input_size(args.method, get_plugins())
    config = run_config(args.method, size, args.batch, args.steps, args.steps, args, Path("unused"))
    step = bare_step(config, size, args.batch, device, bf16)
    classes = {type(m).__name__ for m in step.student.modules() if next(m.children(), None) is not None or m is step.student}
    for model in (step.student, step.teacher):
        label_modules(model, classes)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(args.steps):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    rate = args.steps * args.batch / (time.perf_counter() - t0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    events = prof.key_averages()
    device_time = "device_time_total" if cuda else "cpu_time_total"
    self_time = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, self_time) for e in events if not e.key.startswith("module::")) or 1.0
    per_step = lambda us: us / 1e3 / args.steps  # noqa: E731  (ms per step)
    modules = sorted(((e.key.removeprefix("module::"), getattr(e, device_time), e.count // args.steps) for e in events
                      if e.key.startswith("module::")), key=lambda r: -r[1])  # fmt: skip
    ops = sorted(((e.key, getattr(e, self_time), e.count // args.steps) for e in events if not e.key.startswith("module::")),
                 key=lambda r: -r[1])[: args.top]  # fmt: skip
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.method}, {size[0]}×{size[1]}, batch {args.batch}, {'bf16' if bf16 else 'fp32'}, channels_last "
          f"{'on' if step.channels_last else 'off'}, {where}: bare step {rate:.1f} img/s; profiled {args.steps} steps, "
          f"{per_step(total):.1f} ms of {'device' if cuda else 'CPU'} time per step\n")
    print("| module class (forward, teacher + student) | calls per step | ms per step | share of the step |\n|---|---|---|---|")
    for name, t, calls in modules:
        print(f"| {name} | {calls} | {per_step(t):.2f} | {t / total:.1%} |")
    print("\n| operator (self time, forward + backward) | calls per step | ms per step | share of the step |\n|---|---|---|---|")
    for name, t, calls in ops:
        print(f"| {name[:90]} | {calls} | {per_step(t):.2f} | {t / total:.1%} |")
    if args.json:
        args.json.write_text(json.dumps({"method": args.method, "size": size, "batch": args.batch, "bf16": bf16, "device": where,
                                         "bare_img_s": rate, "step_ms": per_step(total),
                                         "modules": [{"name": n, "calls": c, "ms": per_step(t)} for n, t, c in modules],
                                         "ops": [{"name": n, "calls": c, "ms": per_step(t)} for n, t, c in ops]}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
