"""Protocols: ``upstream`` runs each method as its own release does; ``paper`` runs it as the LoQI-VPR authors did.

A protocol is data the plugins declare, applied when the config is resolved and the model is built: the
method's preprocessing and config defaults (``EncoderSpec.protocols``), a suffix on the degradation that ends
the chain (``DegradationSpec.protocols``), and, for ``paper``, fp32 and the authors' loss weighting
(``loqi_core.losses.paper``). The resolved config written into every run directory shows what ran.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.hooks.manager import Plugins
    from loqi_core.hooks.specs import EncoderSpec

PROTOCOLS = ("upstream", "paper")

GENERIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "upstream": {},
    # the authors' autocast runs with dtype float32 (AMP is a no-op), TF32 on: fp32 is what they ran; their
    # student is in train() mode (batch-norm statistics drift, dropout on)
    "paper": {"eval.precision": "fp32", "distill.precision": "fp32", "distill.freeze_bn": False, "distill.dropout": True},
}


def protocol_defaults(protocol: str, spec: "EncoderSpec | None") -> dict[str, Any]:
    """Config defaults (dotted paths) of ``protocol``: the generic ones, then the method's own."""
    out = dict(GENERIC_DEFAULTS.get(protocol, {}))
    if spec is not None and protocol in spec.protocols:
        out.update(spec.protocols[protocol].run_defaults)
    return out


def protocol_degrade(spec: str, protocol: str, plugins: "Plugins") -> str:
    """The degradation spec under ``protocol``: the last stage (the image the authors wrote to a file) may take a suffix.

    ``res360p`` → ``res360p-q95`` under ``paper`` (their ``cv2.imwrite`` stores JPEG at quality 95); a stage
    followed by another keeps its form (``res270p+qp40``: the codec's frames are what is stored).
    """
    tokens = [t.strip() for t in spec.split("+")]
    if protocol == "upstream" or not tokens[-1]:
        return spec
    for _, dspec, _ in plugins.degradations.items():
        suffix = dspec.protocols.get(protocol)
        if suffix and re.fullmatch(dspec.pattern, tokens[-1]) and not tokens[-1].endswith(suffix):
            tokens[-1] += suffix
            return "+".join(tokens)
    return spec


def protocol_notes(protocol: str, spec: "EncoderSpec | None") -> list[str]:
    """What ``protocol`` changes for this method, one line each (for reports and ``reproduce --dry-run``)."""
    if protocol == "upstream":
        return []
    notes = [f"protocol {protocol}: " + ", ".join(f"{k}={v}" for k, v in GENERIC_DEFAULTS.get(protocol, {}).items())]
    if spec is not None and protocol in spec.protocols:
        notes += list(spec.protocols[protocol].notes)
    return notes
