"""Triplet loss on a GPU at the paper's step size: no host sync (CUDA sync debug mode = error), same value as the
per-anchor loop it replaced, and the time of both. Usage: python benchmarks/triplet_gpu.py [batch] [dim]."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def load_terms():
    """loqi_core.losses.terms; without loqi's dependencies installed, with a stand-in for the params models."""
    try:
        from loqi_core.losses import terms
        from loqi_core.losses.params import TripletParams

        return terms, TripletParams
    except ImportError:
        @dataclass
        class TripletParams:
            margin: float = 0.2**0.5
            negatives: int = 5
            negative_mining: str = "random"
            negative_min_distance_m: float = 30.0
            scale: float = 0.1

        pkg, losses = types.ModuleType("loqi_core"), types.ModuleType("loqi_core.losses")
        params = types.ModuleType("loqi_core.losses.params")
        pkg.__path__, losses.__path__ = [str(ROOT / "loqi_core")], [str(ROOT / "loqi_core/losses")]
        params.ICKDParams = params.MSEParams = object
        params.TripletParams = TripletParams
        sys.modules.update({"loqi_core": pkg, "loqi_core.losses": losses, "loqi_core.losses.params": params})
        spec = importlib.util.spec_from_file_location("loqi_core.losses.terms", ROOT / "loqi_core/losses/terms.py")
        terms = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(terms)  # type: ignore[union-attr]
        return terms, TripletParams


def loop_triplet(desc, ids, positions, negatives=5, margin=0.2**0.5, scale=0.1):
    """The per-anchor implementation before the fix (hardest negatives, float64 mask so the values compare)."""
    desc = F.normalize(desc.float(), dim=1)
    same = ids[:, None] == ids[None, :]
    pos_mask, neg_mask = same & ~torch.eye(len(ids), dtype=torch.bool, device=desc.device), ~same
    neg_mask &= torch.cdist(positions.double(), positions.double(), compute_mode="donot_use_mm_for_euclid_dist") > 30.0
    sim, dist = desc @ desc.T, torch.cdist(desc, desc, compute_mode="donot_use_mm_for_euclid_dist")
    losses = []
    for a in range(len(desc)):
        if not pos_mask[a].any() or not neg_mask[a].any():
            continue
        cand = torch.nonzero(pos_mask[a]).flatten()
        positive = cand[sim[a, cand].argmax()]
        negs = torch.nonzero(neg_mask[a]).flatten()
        negs = negs[sim[a, negs].argsort(descending=True)[:negatives]]
        losses.append(F.relu(dist[a, positive] - dist[a, negs] + margin).mean())
    return scale * torch.stack(losses).sum()


def main() -> None:
    batch, dim = (int(a) for a in (sys.argv[1:] + ["168", "8448"])[:2])
    terms, TripletParams = load_terms()
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    ids = torch.arange(batch, device=dev) // 4
    centres = torch.rand(batch // 4 + 1, 2, device=dev, generator=g, dtype=torch.float64) * 400
    positions = centres[ids] + torch.rand(batch, 2, device=dev, generator=g, dtype=torch.float64) * 16 + 3.2e7
    desc = torch.randn(batch, dim, device=dev, generator=g, requires_grad=True)
    hardest = terms.TripletLoss(TripletParams(negative_mining="hardest"))
    random = terms.TripletLoss(TripletParams())
    batch_of = lambda d: terms.DistillBatch(d, d, d, d, ids, positions)  # noqa: E731

    new, old = hardest(batch_of(desc)), loop_triplet(desc, ids, positions)
    print(f"batch {batch} x {dim}: vectorised {new.item():.8f}  loop {old.item():.8f}  |diff| {abs(new.item() - old.item()):.2e}")
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the loss now raises
    for loss in (hardest, random):
        loss(batch_of(desc)).backward()
    torch.cuda.set_sync_debug_mode("default")
    print("no host sync in forward + backward (hardest and random mining)")

    def timed(fn, n=20):
        fn().backward()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn().backward()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n * 1e3

    t_new = timed(lambda: random(batch_of(desc)))
    t_old = timed(lambda: loop_triplet(desc, ids, positions))
    print(f"forward+backward per step: vectorised {t_new:.2f} ms, loop {t_old:.2f} ms, ratio {t_old / t_new:.1f}x "
          f"({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
