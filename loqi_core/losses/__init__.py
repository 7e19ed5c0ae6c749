"""Built-in distillation losses (DESIGN §4), registered through the same hook a third-party plugin uses.

The reference implementation's scale factors (ICKD /1000, MSE ×100, triplet ÷10 per anchor) are
exposed as each loss's documented ``scale`` parameter rather than hidden in the code.
"""

from __future__ import annotations

from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.hooks.specs import LossSpec
from loqi_core.losses.params import ICKDParams, MSEParams, MultiSimilarityParams, TripletParams


def _ickd(params: ICKDParams):
    from loqi_core.losses.terms import ICKDLoss

    return ICKDLoss(params)


def _mse(params: MSEParams):
    from loqi_core.losses.terms import MSELoss

    return MSELoss(params)


def _triplet(params: TripletParams):
    from loqi_core.losses.terms import TripletLoss

    return TripletLoss(params)


def _multisimilarity(params: MultiSimilarityParams):
    from loqi_core.losses.metric import MultiSimilarityLoss

    return MultiSimilarityLoss(params)


@hookimpl
def loqi_register_losses(register):
    register(LossSpec("ickd", _ickd, ICKDParams, "Inter-channel correlation KD on encoder feature maps"))
    register(LossSpec("mse", _mse, MSEParams, "MSE between student (degraded) and teacher (clean) descriptors"))
    register(LossSpec("triplet", _triplet, TripletParams, "Triplet loss on student descriptors", needs_places=True))
    register(
        LossSpec(
            "multisimilarity", _multisimilarity, MultiSimilarityParams,
            "Multi-similarity metric-learning loss on student descriptors (the finetune baseline)", needs_places=True,
        )
    )
