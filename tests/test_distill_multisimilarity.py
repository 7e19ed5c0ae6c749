"""The multi-similarity loss (finetune baseline) against a direct, loop-by-loop reading of its formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from loqi_core.losses.expression import build_loss
from loqi_core.losses.metric import MultiSimilarityLoss
from loqi_core.losses.params import MultiSimilarityParams
from loqi_core.losses.terms import DistillBatch


def reference(desc: torch.Tensor, ids: list[int], p: MultiSimilarityParams) -> float:
    d = F.normalize(desc.double(), dim=1)
    s = (d @ d.T).tolist()
    n, losses = len(ids), []
    for i in range(n):
        pos = [s[i][j] for j in range(n) if j != i and ids[j] == ids[i]]
        neg = [s[i][j] for j in range(n) if ids[j] != ids[i]]
        if p.mine:
            keep_neg = [x for x in neg if pos and x + p.epsilon > min(pos)]
            keep_pos = [x for x in pos if neg and x - p.epsilon < max(neg)]
            pos, neg = keep_pos, keep_neg
        if not pos and not neg:
            continue
        lp = math.log(1 + sum(math.exp(-p.alpha * (x - p.base)) for x in pos)) / p.alpha
        ln = math.log(1 + sum(math.exp(p.beta * (x - p.base)) for x in neg)) / p.beta
        losses.append(lp + ln)
    return p.scale * sum(losses) / max(1, len(losses))


@pytest.mark.parametrize("mine", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_formula(mine, seed):
    g = torch.Generator().manual_seed(seed)
    desc = torch.randn(12, 8, generator=g)
    ids = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    p = MultiSimilarityParams(mine=mine, beta=10.0, base=0.3)
    value = MultiSimilarityLoss(p)(DistillBatch(None, None, desc, None, torch.tensor(ids)))  # type: ignore[arg-type]
    assert float(value) == pytest.approx(reference(desc, ids, p), rel=1e-5)


def test_gradient_pulls_places_together():
    g = torch.Generator().manual_seed(0)
    desc = torch.randn(8, 16, generator=g).requires_grad_(True)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = build_loss("multisimilarity", {"multisimilarity": {"mine": False}})
    assert loss.needs_places
    opt = torch.optim.SGD([desc], lr=5.0)
    start = None
    for _ in range(60):
        total, terms = loss(DistillBatch(None, None, desc, None, ids))  # type: ignore[arg-type]
        start = float(total.detach()) if start is None else start
        opt.zero_grad()
        total.backward()
        opt.step()
    d = F.normalize(desc.detach(), dim=1)
    sim = d @ d.T
    same = ids[:, None] == ids[None, :]
    assert float(total.detach()) < start - 0.2  # the positive term alone cannot go below log(1 + e^-1)
    assert sim[same & ~torch.eye(8, dtype=torch.bool)].mean() > sim[~same].mean() + 0.5


def test_needs_place_ids():
    with pytest.raises(ValueError, match="needs place ids"):
        MultiSimilarityLoss(MultiSimilarityParams())(DistillBatch(None, None, torch.randn(4, 3), None))  # type: ignore[arg-type]
