"""The three loss terms of the paper, each a callable on a DistillBatch (formulas: DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from loqi_core.losses import ICKDParams, MSEParams, TripletParams


@dataclass
class DistillBatch:
    """What one training step hands every loss: both models' latents and descriptors, and the labels."""

    student_latent: torch.Tensor
    teacher_latent: torch.Tensor
    student_desc: torch.Tensor
    teacher_desc: torch.Tensor
    place_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None


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
        s, t = batch.student_latent, batch.teacher_latent
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"ICKD needs equal channel counts, got student {s.shape[1]} and teacher {t.shape[1]}")
        diff = channel_gram(s, self.params.normalize_channels) - channel_gram(t, self.params.normalize_channels)
        if self.params.reduction == "frobenius":
            value = diff.pow(2).sum().sqrt()
        else:
            value = diff.pow(2).sum() / (diff.shape[1] * diff.shape[0])
        return self.params.scale * value


class MSELoss:
    def __init__(self, params: MSEParams) -> None:
        self.params = params

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        s = F.normalize(batch.student_desc.float(), dim=1)
        t = F.normalize(batch.teacher_desc.float(), dim=1)
        return self.params.scale * F.mse_loss(s, t)


class TripletLoss:
    """Per anchor: the student's most similar positive (same place) against N negatives (other places)."""

    def __init__(self, params: TripletParams) -> None:
        self.params = params

    def __call__(self, batch: DistillBatch) -> torch.Tensor:
        p = self.params
        desc, pos_mask, neg_mask = place_pairs(batch, "triplet")
        sim = desc @ desc.T
        if batch.positions is not None:
            pos = batch.positions.to(desc.device).float()
            neg_mask &= torch.cdist(pos, pos) > p.negative_min_distance_m
        dist = torch.cdist(desc, desc)
        losses = []
        for a in range(len(desc)):
            if not pos_mask[a].any() or not neg_mask[a].any():
                continue
            candidates = torch.nonzero(pos_mask[a]).flatten()
            positive = candidates[sim[a, candidates].argmax()]
            negs = torch.nonzero(neg_mask[a]).flatten()
            if p.negative_mining == "hardest":
                negs = negs[sim[a, negs].argsort(descending=True)[: p.negatives]]
            else:
                negs = negs[torch.randperm(len(negs), device="cpu")[: p.negatives].to(negs.device)]
            losses.append(F.relu(dist[a, positive] - dist[a, negs] + p.margin).mean())
        if not losses:
            return desc.sum() * 0.0
        return p.scale * torch.stack(losses).sum()
