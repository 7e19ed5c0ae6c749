"""The LoQI-VPR authors' loss weighting, as their trainer applies it (``--protocol paper``).

Their trainer (``trainer_gsv-cities.py``) multiplies the MSE term by ``len(images_high)`` and divides the
triplet term by it once more; that dict has one entry per enabled model, and they enable all five. Their ICKD
is a Frobenius norm over one step of 168 images per model (24 anchors × anchor, positive and 5 negatives).
loqi's defaults are the single-model values (MSE ×100, triplet ÷10 per anchor, ICKD ÷1000 over the batch).
"""

from __future__ import annotations

from typing import Any

from loqi_core.losses.expression import parse_loss_expression

MODELS_ENABLED = 5
"""len(images_high) in the authors' trainer: NetVLAD, MixVPR, AnyLoc, SALAD and CricaVPR."""
STEP_IMAGES = 168
"""Images per model per step in the authors' trainer: 6 places × 4 anchors × (1 + 1 + 5)."""
FACTORS = {"mse": float(MODELS_ENABLED), "triplet": 1.0 / MODELS_ENABLED}


def paper_weighting(expr: str, params: dict[str, dict[str, Any]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """``("ickd+mse", {})`` → ``("ickd+5*mse", {"ickd": {"step_images": 168}})``: the authors' effective weights.

    Weights and params a user wrote are kept and multiplied, never replaced (an explicit ``step_images`` wins).
    """
    terms = parse_loss_expression(expr)
    out = "+".join(f"{weight * FACTORS.get(name, 1.0):g}*{name}" for weight, name in terms)
    params = {k: dict(v) for k, v in params.items()}
    if any(name == "ickd" for _, name in terms):
        params.setdefault("ickd", {}).setdefault("step_images", STEP_IMAGES)
    return out, params
