"""The built-in losses' parameters (``-s distill.loss_params.ickd.scale=...``), each field documented; the reference
implementation's scale factors are explicit ``scale`` fields here rather than hidden in the code."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from loqi_core.hooks.specs import Params


class ICKDParams(Params):
    """ICKD on the encoders' latent maps: channel-correlation (Gram) matrices of student vs teacher."""

    scale: float = Field(1e-3, description="multiplier; the reference divides by 1000")
    normalize_channels: bool = Field(True, description="L2-normalise each channel over HW before the Gram (LoQI)")
    reduction: Literal["frobenius", "squared_mean"] = Field(
        "frobenius",
        description="frobenius: ‖G_s−G_t‖_F over the batch (LoQI); squared_mean: Σ(G_s−G_t)²/(C·B) (original ICKD)",
    )
    step_images: int | None = Field(
        None, ge=1,
        description="frobenius only: rescale the norm to a step of this many images (×√(N/B)); the authors' step "
        "encodes 168 (24 anchors × (anchor, positive, 5 negatives)); None = the batch as it is",
    )


class MSEParams(Params):
    """Mean squared error between L2-normalised student and teacher descriptors."""

    scale: float = Field(100.0, description="multiplier; the reference multiplies by 100 (× number of models)")


class TripletParams(Params):
    """Weakly supervised triplet loss on the student's descriptors of the degraded images."""

    margin: float = Field(0.2**0.5, description="margin in L2 distance; the reference uses √0.2")
    negatives: int = Field(5, ge=1, description="negatives per anchor")
    negative_mining: Literal["random", "hardest"] = "random"
    negative_min_distance_m: float = Field(30.0, description="negatives must be farther than this when positions exist")
    scale: float = Field(0.1, description="multiplier on the sum over anchors of the mean over (positive, negative) pairs")


class MultiSimilarityParams(Params):
    """Multi-similarity loss on the student's descriptors (MixVPR/SALAD/CricaVPR's training loss; finetune baseline)."""

    alpha: float = Field(1.0, gt=0, description="weight of positive pairs (MixVPR: 1)")
    beta: float = Field(50.0, gt=0, description="weight of negative pairs (MixVPR: 50)")
    base: float = Field(0.0, description="similarity margin λ (MixVPR: 0)")
    epsilon: float = Field(0.1, ge=0, description="pair-mining margin (MixVPR's miner: 0.1)")
    mine: bool = Field(True, description="keep only hard pairs (multi-similarity mining)")
    scale: float = Field(1.0, description="multiplier")
