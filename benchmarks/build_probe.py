"""What ``build_model``'s probe costs: the blank-image forward pass that refuses a wrong ``out_channels`` or parts that
do not fit before any weights load (loqi_core/models/model.py, ``_probe``).

Builds each method with random weights, alternately with the probe and with it replaced by a no-op, in one process,
so both see the same machine load; prints the median and the range of each and the ratio of the medians.

    python benchmarks/build_probe.py --threads 1 --repeats 7 lite0-gem mixvpr salad
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", nargs="+", help="method names (--method)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7, help="builds per method and setting")
    args = parser.parse_args()

    import torch

    import loqi_core.models.model as model_module
    from loqi_core.models.model import build_model

    torch.set_num_threads(args.threads)
    probe = model_module._probe
    print(f"| method | with probe (s) | without (s) | ratio |  ({args.repeats} builds each, {args.threads} thread(s))")
    print("|---|---:|---:|---:|")
    for method in args.methods:
        build_model(method, weights="random")  # imports and first-call costs out of the way
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for on in (True, False):
                model_module._probe = probe if on else (lambda *a: None)
                start = time.perf_counter()
                build_model(method, weights="random")
                times[on].append(time.perf_counter() - start)
        model_module._probe = probe
        on, off = statistics.median(times[True]), statistics.median(times[False])
        spread = lambda xs: f"{min(xs):.3f}–{max(xs):.3f}"  # noqa: E731
        print(f"| {method} | {on:.3f} ({spread(times[True])}) | {off:.3f} ({spread(times[False])}) | {on / off:.2f} |")


if __name__ == "__main__":
    main()
