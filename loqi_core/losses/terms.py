"""The three loss terms of the paper, each a callable on a DistillBatch (formulas: DESIGN §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loqi_core.losses.params import ICKDParams, MSEParams, TripletParams


@dataclass
class DistillBatch:
    """What one training step hands every loss: both models' latents and descriptors, and the labels."""

    student_latent: torch.Tensor
    teacher_latent: torch.Tensor
    student_desc: torch.Tensor
    teacher_desc: torch.Tensor
    place_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    triplets: torch.Tensor | None = None
    """Mined tuples (``distill.mine``): A×(2+N) batch positions of each anchor, its positive and its N negatives."""


def channel_gram(latent: torch.Tensor, normalize_channels: bool = True) -> torch.Tensor:
    """B×C×H×W → row-normalised channel correlation B×C×C (spatial size may differ between models)."""
    x = latent.flatten(2).float()
    if normalize_channels:
        x = F.normalize(x, p=2, dim=2)
    return F.normalize(torch.bmm(x, x.transpose(1, 2)), p=2, dim=2)


def place_pairs(batch: DistillBatch, loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalised student descriptors, and which pairs share a place (positives) or not (negatives)."""
    if batch.place_ids is None:
        raise ValueError(f"the {loss} loss needs place ids; this training set has none (use ickd or mse)")
    desc = F.normalize(batch.student_desc.float(), dim=1)
    ids = batch.place_ids.to(desc.device)
    same = ids[:, None] == ids[None, :]
    eye = torch.eye(len(ids), dtype=torch.bool, device=desc.device)
    return desc, same & ~eye, ~same


class ICKDLoss:
    def __init__(self, params: ICKDParams) -> None:
        self.params = params

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        s, t = batch.student_latent, batch.teacher_latent.detach()  # the teacher is a fixed target
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"ICKD needs equal channel counts, got student {s.shape[1]} and teacher {t.shape[1]}")
        diff = channel_gram(s, self.params.normalize_channels) - channel_gram(t, self.params.normalize_channels)
        if self.params.reduction == "frobenius":
            value = diff.pow(2).sum().sqrt()
            if self.params.step_images is not None:
                value = value * math.sqrt(self.params.step_images / diff.shape[0])
        else:
            value = diff.pow(2).sum() / (diff.shape[1] * diff.shape[0])
        return self.params.scale * value


class MSELoss:
    def __init__(self, params: MSEParams) -> None:
        self.params = params

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        s = F.normalize(batch.student_desc.float(), dim=1)
        t = F.normalize(batch.teacher_desc.detach().float(), dim=1)
        return self.params.scale * F.mse_loss(s, t)


def far_apart(positions: torch.Tensor, min_distance_m: float) -> torch.Tensor:
    """B×2 metric positions → B×B mask of pairs farther apart than ``min_distance_m``.

    Exact at any batch size and translation-invariant: float64 coordinate differences (not cdist's
    matrix-multiply expansion, whose float32 error at UTM scale ≈3e7 reaches kilometres above 25 rows).
    """
    pos = positions.to(torch.float64)
    pos = pos - pos[:1]  # relative to the batch, so the magnitude of the coordinates does not matter
    return (pos[:, None, :] - pos[None, :, :]).pow(2).sum(-1) > float(min_distance_m) ** 2


class TripletLoss:
    """Per anchor: the student's most similar positive (same place) against N negatives (other places).

    Vectorised over anchors (no host sync per anchor). Negatives are the N most similar (``hardest``) or a
    uniformly random N of the anchor's negatives; an anchor with fewer than N uses all it has. A batch of mined
    tuples (``batch.triplets``) brings each anchor's positive and negatives: those are used, as the authors do.
    """

    def __init__(self, params: TripletParams) -> None:
        self.params = params

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        if batch.triplets is not None:
            return self._mined(batch)
        p = self.params
        desc, pos_mask, neg_mask = place_pairs(batch, "triplet")
        if batch.positions is not None:
            neg_mask &= far_apart(batch.positions.to(desc.device), p.negative_min_distance_m)
        sim = desc @ desc.T
        # pairwise differences, never the |a|²+|b|²−2ab expansion, so the distances are exact at any batch size
        dist = torch.cdist(desc, desc, compute_mode="donot_use_mm_for_euclid_dist")
        lowest = torch.finfo(sim.dtype).min
        positive = torch.where(pos_mask, sim, lowest).argmax(1)  # first most similar positive, as a loop would pick
        detached = sim.detach()
        if p.negative_mining == "hardest":
            keys = torch.where(neg_mask, detached, lowest)
        else:  # a uniformly random subset: independent uniform keys, keep the N largest
            keys = torch.where(neg_mask, torch.rand(sim.shape, device=sim.device), -1.0)
        negs = keys.topk(min(p.negatives, keys.shape[1]), dim=1).indices
        chosen = neg_mask.gather(1, negs)  # False where an anchor has fewer than N negatives
        d_pos = dist.gather(1, positive[:, None])
        hinge = F.relu(d_pos - dist.gather(1, negs) + p.margin) * chosen
        per_anchor = hinge.sum(1) / chosen.sum(1).clamp(min=1)
        valid = pos_mask.any(1) & neg_mask.any(1)
        return p.scale * (per_anchor * valid).sum()

    def _mined(self, batch: DistillBatch) -> torch.Tensor:
        """trainer_gsv-cities.py: per anchor, the hinge over (anchor, its positive, each of its negatives), the mean
        over its negatives, summed over anchors."""
        p = self.params
        desc = F.normalize(batch.student_desc.float(), dim=1)
        t = batch.triplets.to(desc.device)  # type: ignore[union-attr]
        anchor, positive, negatives = desc[t[:, 0]], desc[t[:, 1]], desc[t[:, 2:]]
        d_pos = (anchor - positive).norm(dim=1, keepdim=True)
        d_neg = (anchor[:, None, :] - negatives).norm(dim=2)
        return p.scale * F.relu(d_pos - d_neg + p.margin).mean(dim=1).sum()
