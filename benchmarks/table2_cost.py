"""GPU-hours of the paper's whole Table II grid under ``--protocol paper`` (``loqi reproduce table2``): every
evaluation row and every training run, from measured or documented rates.

    python benchmarks/table2_cost.py --protocol-json protocol_cpu.json        # rates derived as below
    python benchmarks/table2_cost.py --protocol-json OUT/protocol.json        # a GPU run's: rates measured

Evaluation: 19 rows (pretrained clean, pretrained degraded, finetuned, distilled per method; AnyLoc has no
finetuned row) × the 136 606 images of MSLS, Nordland and Tokyo 24/7 (database and queries; each row encodes
them all once, later rows of the same model read the descriptor cache). Training: one pass over GSV-Cities per
run, 5 distillations and 4 finetunes. ``--protocol-json`` is the ``protocol`` part of ``eval_throughput.py``:

- run on a GPU (``--device cuda``), its ``paper`` rows are the evaluation rates themselves;
- run on a CPU with ``--protocol-step``, each method's ratio *paper evaluation img/s ÷ bare distillation step
  img/s* (both fp32, measured side by side) turns the documented fp32 step rate on an H200 (DESIGN §7) into an
  evaluation rate. That assumes the GPU keeps the CPU's proportions between two workloads of the same network:
  an estimate, labelled as one.

Training uses the documented fp32 step rates (teacher forward + student forward/backward per image); a finetune
has no teacher, so its time is bounded by the same rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TEST_IMAGES = {"msls": 18871 + 11084, "nordland": 27592 + 2760, "tokyo247": 75984 + 315}
"""Database + queries of the paper's three test sets (its Section IV-A2 table)."""
METHODS = ("mixvpr", "cricavpr", "salad", "netvlad", "anyloc")
FINETUNED = {"mixvpr", "cricavpr", "salad", "netvlad"}
STEP_FP32_H200 = {"netvlad": 179.0, "mixvpr": 913.0, "salad": 276.0, "cricavpr": 658.0}
"""DESIGN §7: teacher forward + student forward/backward, images/s on an H200 in fp32/TF32 (the paper's precision)."""
STEP_BF16_H200 = {"netvlad": 418.0, "mixvpr": 1694.0, "salad": 715.0, "cricavpr": 1442.0, "anyloc": 140.0}


def step_rate(method: str) -> tuple[float, str]:
    """The fp32 step rate on an H200 and where it comes from."""
    if method in STEP_FP32_H200:
        return STEP_FP32_H200[method], "DESIGN §7, fp32"
    ratio = STEP_FP32_H200["salad"] / STEP_BF16_H200["salad"]  # the DINOv2 family's fp32/bf16 ratio
    return STEP_BF16_H200[method] * ratio, f"DESIGN §7 bf16 × SALAD's fp32/bf16 ({ratio:.2f})"


def eval_rates(protocol_rows: list[dict]) -> dict[str, tuple[float, str]]:
    """Evaluation img/s per method under the paper protocol, and how it was obtained."""
    rates = {}
    for method in METHODS:
        paper = next((r for r in protocol_rows if r["method"] == method and r["protocol"] == "paper"), None)
        if paper is None:
            continue
        if paper["device"].startswith("cuda"):
            rates[method] = (paper["img_s"], f"measured on the GPU ({paper['precision']}, {paper['model_input'][0]}×{paper['model_input'][1]})")
        elif "over_step_rounds" in paper:
            q = statistics.median(paper["over_step_rounds"])
            step, source = step_rate(method)
            rates[method] = (step * q, f"{source} {step:.0f} img/s × CPU ratio {q:.2f} (paper evaluation ÷ bare step, median of "
                                       f"{len(paper['over_step_rounds'])} rounds, {min(paper['over_step_rounds']):.2f}-{max(paper['over_step_rounds']):.2f})")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol-json", type=Path, required=True, help="eval_throughput.py --json output with a protocol part")
    ap.add_argument("--train-images", type=int, default=4 * 62_000,
                    help="images per training pass (default 4 per place × GSV-Cities' ~62k places in all 23 cities: "
                         "an upper bound for the paper's 12 cities)")
    args = ap.parse_args()
    rows = json.loads(args.protocol_json.read_text())["protocol"]
    rates = eval_rates(rows)
    images = sum(TEST_IMAGES.values())
    print(f"test images per evaluation row: {images:,}; training images per run: {args.train_images:,}\n")
    print("| method | eval rows | encodings | eval img/s (paper) | eval GPU-h | training runs | train img/s (fp32) | train GPU-h | GPU-h |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = {"eval": 0.0, "train": 0.0, "degraded_eval": 0.0}
    notes = []
    for method in METHODS:
        if method not in rates:
            print(f"| {method} | — | — | not in {args.protocol_json.name} | — | — | — | — | — |")
            continue
        n_rows = 4 if method in FINETUNED else 3
        runs = 2 if method in FINETUNED else 1
        rate, how = rates[method]
        train, train_how = step_rate(method)
        eval_h = n_rows * images / rate / 3600
        train_h = runs * args.train_images / train / 3600
        total["eval"] += eval_h
        total["train"] += train_h
        total["degraded_eval"] += eval_h * (n_rows - 1) / n_rows  # every row but pretrained-on-clean-images
        notes.append(f"- {method}: evaluation {how}; training {train_how}")
        print(f"| {method} | {n_rows} | {n_rows * images:,} | {rate:.0f} | {eval_h:.2f} | {runs} | {train:.0f} | {train_h:.2f} | "
              f"{eval_h + train_h:.2f} |")
    print(f"| **all** | | | | **{total['eval']:.2f}** | | | **{total['train']:.2f}** | **{total['eval'] + total['train']:.2f}** |\n")
    print(f"each further degradation adds its degraded rows: {total['degraded_eval']:.2f} GPU-h of evaluation, and its trainings\n")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
