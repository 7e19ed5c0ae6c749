"""Triplet loss: an exact ">30 m" negative mask at any batch size and UTM scale, and the vectorised loss
equal to the per-anchor loop it replaced."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loqi_core.losses.expression import build_loss
from loqi_core.losses.terms import DistillBatch, far_apart


def _utm_batch(n: int = 64, seed: int = 0) -> np.ndarray:
    """GSV-Cities-like positions: 16 places of 4 images within a 400 m block, zone·1e6 + easting ≈ 3.2e7."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 400, size=(n // 4, 2))
    pos = np.repeat(centres, 4, axis=0) + rng.uniform(-8, 8, size=(n, 2))
    return pos + np.array([32_000_000.0 + 512_345.0, 4_512_345.0])


def _mask_by_hand(pos: np.ndarray, thr: float) -> np.ndarray:
    return np.array([[np.hypot(*(a - b)) > thr for b in pos] for a in pos])


def test_far_apart_is_exact_at_utm_scale_and_translation_invariant():
    pos = _utm_batch()
    expected = _mask_by_hand(pos, 30.0)
    assert 0.2 < expected.mean() < 0.98  # the batch has both near and far pairs
    at_utm = far_apart(torch.from_numpy(pos), 30.0).numpy()
    at_origin = far_apart(torch.from_numpy(pos - pos.min(0)), 30.0).numpy()
    assert (at_utm == expected).all() and (at_origin == expected).all()
    # what the matmul expansion gets wrong at this scale (the bug): float32 cdist flips a large share
    cdist = (torch.cdist(torch.from_numpy(pos).float(), torch.from_numpy(pos).float()) > 30.0).numpy()
    assert (cdist != expected).mean() > 0.05


def test_triplet_loss_is_the_same_at_utm_scale_and_at_the_origin():
    pos = _utm_batch()
    g = torch.Generator().manual_seed(1)
    desc = torch.randn(64, 16, generator=g)
    ids = torch.arange(64) // 4
    loss = build_loss("triplet", {"triplet": {"negative_mining": "hardest"}})
    lat = torch.zeros(64, 1, 1, 1)
    far = loss(DistillBatch(lat, lat, desc, desc, ids, torch.from_numpy(pos)))[0]
    near = loss(DistillBatch(lat, lat, desc, desc, ids, torch.from_numpy(pos - pos.mean(0))))[0]
    assert far.item() == near.item() > 0


def _loop_triplet(desc, ids, positions, negatives, margin, scale, mining):
    """The per-anchor implementation the vectorised loss replaced (its cdist calls stay ≤ 25 rows here)."""
    desc = F.normalize(desc.float(), dim=1)
    same = ids[:, None] == ids[None, :]
    pos_mask, neg_mask = same & ~torch.eye(len(ids), dtype=torch.bool), ~same
    if positions is not None:
        neg_mask &= torch.cdist(positions.float(), positions.float()) > 30.0
    sim, dist = desc @ desc.T, torch.cdist(desc, desc)
    losses = []
    for a in range(len(desc)):
        if not pos_mask[a].any() or not neg_mask[a].any():
            continue
        cand = torch.nonzero(pos_mask[a]).flatten()
        positive = cand[sim[a, cand].argmax()]
        negs = torch.nonzero(neg_mask[a]).flatten()
        if mining == "hardest":
            negs = negs[sim[a, negs].argsort(descending=True)[:negatives]]
        else:
            negs = negs[torch.randperm(len(negs))[:negatives]]
        losses.append(F.relu(dist[a, positive] - dist[a, negs] + margin).mean())
    return scale * torch.stack(losses).sum() if losses else torch.tensor(0.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mining,negatives", [("hardest", 1), ("hardest", 3), ("hardest", 5), ("random", 24)])
def test_vectorised_triplet_equals_the_per_anchor_loop(seed, mining, negatives):
    g = torch.Generator().manual_seed(seed)
    n = 24
    desc = torch.randn(n, 8, generator=g)
    ids = torch.randint(0, 6, (n,), generator=g)
    positions = torch.rand(n, 2, generator=g) * 100  # some other-place pairs are within 30 m
    params = {"negatives": negatives, "negative_mining": mining, "margin": 0.7, "scale": 0.1}
    value = build_loss("triplet", {"triplet": params})(DistillBatch(desc, desc, desc, desc, ids, positions))[0]
    expected = _loop_triplet(desc, ids, positions, negatives, 0.7, 0.1, mining)
    assert expected.item() > 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_random_negatives_are_valid_distinct_and_uniform():
    # only anchor 0 counts: its positive is 1 and its negatives 2..9; anchor 1 sits within 30 m of them all
    n = 10
    desc = F.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    ids = torch.tensor([0, 0] + list(range(1, 9)))
    positions = torch.tensor([[0.0, 0.0], [-100.0, 0.0]] + [[-100.0, float(k)] for k in range(8)])
    loss = build_loss("triplet", {"triplet": {"negatives": 2, "margin": 10.0, "scale": 1.0}})
    d = torch.cdist(desc, desc, compute_mode="donot_use_mm_for_euclid_dist").double()
    pairs = {(i, j): float(d[0, 1] + 10.0 - (d[0, i] + d[0, j]) / 2) for i in range(2, n) for j in range(i + 1, n)}
    torch.manual_seed(0)
    counts = dict.fromkeys(pairs, 0)
    for _ in range(2800):
        value = loss(DistillBatch(desc, desc, desc, desc, ids, positions))[0].item()
        pair = min(pairs, key=lambda k: abs(pairs[k] - value))
        assert abs(pairs[pair] - value) < 1e-5  # two distinct real negatives, never a positive or a near one
        counts[pair] += 1
    assert all(50 < c < 160 for c in counts.values()), counts  # each of the 28 pairs ≈ 100 times
