"""Multi-similarity loss (Wang et al., CVPR 2019): the metric-learning loss MixVPR, SALAD and CricaVPR train
with, used by ``loqi finetune`` as the paper's no-teacher baseline. Written from the paper's formulas.

For anchor i with positives P_i and negatives N_i (cosine similarities S, margin λ = ``base``):

    L_i = 1/α · log(1 + Σ_{p∈P_i} exp(−α (S_ip − λ))) + 1/β · log(1 + Σ_{n∈N_i} exp(β (S_in − λ)))

With mining on, a negative is kept only if S_in + ε > min_p S_ip and a positive only if S_ip − ε < max_n S_in
(the hard pairs); the loss is the mean over anchors that keep at least one pair.
"""

from __future__ import annotations

import torch

from loqi_core.losses.params import MultiSimilarityParams
from loqi_core.losses.terms import place_pairs


class MultiSimilarityLoss:
    def __init__(self, params: MultiSimilarityParams) -> None:
        self.params = params

    def __call__(self, batch) -> torch.Tensor:
        p = self.params
        desc, pos, neg = place_pairs(batch, "multisimilarity")
        sim = desc @ desc.T
        if p.mine:
            inf = torch.finfo(sim.dtype).max
            min_pos = torch.where(pos, sim, torch.full_like(sim, inf)).amin(1, keepdim=True)
            max_neg = torch.where(neg, sim, torch.full_like(sim, -inf)).amax(1, keepdim=True)
            neg = neg & (sim + p.epsilon > min_pos)
            pos = pos & (sim - p.epsilon < max_neg)
        pos_term = torch.where(pos, torch.exp(-p.alpha * (sim - p.base)), torch.zeros_like(sim)).sum(1)
        neg_term = torch.where(neg, torch.exp(p.beta * (sim - p.base)), torch.zeros_like(sim)).sum(1)
        per_anchor = torch.log1p(pos_term) / p.alpha + torch.log1p(neg_term) / p.beta
        active = (pos.any(1) | neg.any(1)).float()
        return p.scale * (per_anchor * active).sum() / active.sum().clamp(min=1.0)
