"""Degradation throughput: images per second per CPU core for each degradation, and the nvJPEG path on a GPU.

One process, ``torch.set_num_threads(1)``; every codec already runs on one thread (x264, x265, SVT-AV1,
libaom by design in the plugins), so the figures are per core: N worker processes give about N times more.
Input: a camera panning over one smooth synthetic scene (``loqi_core.testing.random_images`` on a wide
canvas, shifted 4 pixels per frame), so video P-frames see real motion; photos compress differently, so
compare rows with each other rather than with other tools.

Each spec is timed as ``loqi degrade`` and ``loqi eval`` call it: images one per call, except the video
codecs in ``seq`` mode, which get the whole sequence as one stream (``intra`` mode: one-frame streams, what
images without a capture order get). Figures are the best of ``--repeats`` passes (the least disturbed by
other processes). On a CUDA machine, ``--gpu`` adds JPEG round trips on nvJPEG (a batch per call) next to
the CPU path in the same process.

    python benchmarks/degrade_throughput.py                       # CPU table, 360×640
    python benchmarks/degrade_throughput.py --size 320x320 --specs jpeg10,jpeg90
    python benchmarks/degrade_throughput.py --gpu --gpu-batch 64  # adds nvJPEG rows
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

DEFAULT_SPECS = (
    "jpeg10,jpeg90,webp30,avif30,res270p,res270p-bicubic,scale0.25-area,"
    "qp40:seq,qp40:intra,h264-qp40:seq,h264-qp40:intra,av1-qp50:seq,res270p+qp40:seq"
)


def panning_frames(n: int, height: int, width: int, step: int = 4) -> list:
    """``n`` uint8 3×H×W frames: a window sliding ``step`` pixels per frame over one smooth scene."""
    from loqi_core.testing import random_images

    scene = random_images(1, height, width + step * n, seed=0)[0]
    return [scene[:, :, step * t : step * t + width].contiguous() for t in range(n)]


def psnr(clean: list, degraded: list) -> float:
    import torch.nn.functional as F

    total, count = 0.0, 0
    for c, d in zip(clean, degraded):
        d = d.cpu().float()
        if d.shape != c.shape:
            d = F.interpolate(d[None], size=c.shape[-2:], mode="bicubic", antialias=True)[0].clamp(0, 255)
        total += float((d - c.float()).pow(2).sum())
        count += c.numel()
    return 10 * math.log10(255**2 / (total / count))


def time_spec(spec: str, mode: str, frames: list, repeats: int) -> dict:
    """Best-of-``repeats`` images/s of one spec, plus its bytes per image and PSNR."""
    from loqi_core.degrade.base import Degraded
    from loqi_core.degrade.grammar import parse_degradation

    degradation = parse_degradation(spec)
    whole = mode == "seq" and degradation.temporal

    def one_pass():
        if whole:
            return degradation(frames, seed=0)
        outs = [degradation([f], seed=i) for i, f in enumerate(frames)]
        nbytes = None if outs[0].nbytes is None else [o.nbytes[0] for o in outs]
        return Degraded([o.images[0] for o in outs], nbytes)

    one_pass()  # warm-up: library loading, first-call allocations
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = one_pass()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return {
        "spec": spec,
        "mode": ("sequence" if whole else "intra-only") if degradation.temporal else "per image",
        "sent": f"{out.images[0].shape[-1]}×{out.images[0].shape[-2]}",
        "rate": len(frames) / best,
        "bytes": None if out.nbytes is None else sum(out.nbytes) / len(out.nbytes),
        "psnr": psnr(frames, out.images),
    }


def time_gpu_jpeg(quality: int, frames: list, batch: int, repeats: int) -> list[dict]:
    """JPEG round trips/s on nvJPEG (CUDA tensors, ``batch`` images per call) and, alongside, on the CPU path."""
    import torch

    from loqi_core.degrade.grammar import parse_degradation

    degradation = parse_degradation(f"jpeg{quality}")
    images = (frames * math.ceil(batch / len(frames)))[:batch]
    rows = []
    for device in ("cuda", "cpu"):
        batch_on = [img.to(device) for img in images]
        degradation(batch_on)
        torch.cuda.synchronize()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            out = degradation(batch_on)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rows.append({
            "spec": f"jpeg{quality}", "mode": f"{'nvJPEG' if device == 'cuda' else 'libjpeg-turbo'}, batch {batch}",
            "sent": f"{images[0].shape[-1]}×{images[0].shape[-2]}", "rate": batch / best,
            "bytes": sum(out.nbytes) / batch, "psnr": psnr(images, out.images),
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| spec | fed as | sent size | images/s | bytes/image | PSNR dB |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        nbytes = "-" if r["bytes"] is None else f"{r['bytes']:,.0f}"
        lines.append(f"| `{r['spec']}` | {r['mode']} | {r['sent']} | {r['rate']:,.0f} | {nbytes} | {r['psnr']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="360x640", help="HxW of the clean frames (default 360x640)")
    parser.add_argument("--frames", type=int, default=60, help="frames per pass: one GOP (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per spec; the best counts (default 3)")
    parser.add_argument("--specs", default=DEFAULT_SPECS, help="comma-separated SPEC[:seq|:intra] (default: all families)")
    parser.add_argument("--gpu", action="store_true", help="add nvJPEG rows (needs CUDA)")
    parser.add_argument("--gpu-batch", type=int, default=64, help="images per nvJPEG call (default 64)")
    args = parser.parse_args()

    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)  # res270p on frames under 270 rows warns that it enlarges them
    height, width = (int(v) for v in args.size.lower().split("x"))
    frames = panning_frames(args.frames, height, width)
    rows = []
    for item in args.specs.split(","):
        spec, _, mode = item.strip().partition(":")
        rows.append(time_spec(spec, mode or "seq", frames, args.repeats))
        print(f"  {spec} ({rows[-1]['mode']}): {rows[-1]['rate']:,.0f} images/s", flush=True)
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device visible")
        rows += time_gpu_jpeg(10, frames, args.gpu_batch, args.repeats)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}; "
          f"torch {torch.__version__}, 1 thread; {args.frames} frames {width}×{height}, best of {args.repeats}\n")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
