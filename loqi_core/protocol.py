"""Protocols: ``upstream`` runs each method as its own release does; ``paper`` runs it as the LoQI-VPR authors did.

A protocol is data the plugins declare, applied when the config is resolved and the model is built: the
method's preprocessing and config defaults (``EncoderSpec.protocols``), a suffix on the degradation that ends
the chain (``DegradationSpec.protocols``), and, for ``paper``, fp32 and the authors' loss weighting
(``loqi_core.losses.paper``). The resolved config written into every run directory shows what ran.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from loqi_core.degrade.base import BRACKET, CHOICE, WEIGHTED, split_top
from loqi_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.hooks.manager import Plugins
    from loqi_core.hooks.specs import EncoderSpec

GENERIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "upstream": {},
    # trainer_gsv-cities.py: autocast with dtype float32 (AMP is a no-op) and TF32 on; the whole student in train()
    # (batch-norm statistics drift in every layer, frozen ones too; dropout on); each step is 24 anchors of 6 places,
    # each with its mined positive and 5 negatives, read at their native size with no augmentation
    "paper": {
        "eval.precision": "fp32", "distill.precision": "fp32", "distill.tf32": True, "distill.freeze_bn": False,
        "distill.bn_scope": "all", "distill.dropout": True, "distill.view_size": "native", "distill.augment": False,
        "distill.mine": True, "distill.ema": None,
    },
}
PAPER_VALIDATION: dict[str, Any] = {
    "distill.val": "pitts30k?split=val", "distill.val_parts": 6, "distill.val_database": "teacher", "distill.select": "best",
}
"""The authors' validation (``trainer_gsv-cities.py``): after each sixth of the epoch, Pitts30k-val queries at JPEG-10
through the student against the teacher's descriptors of the raw database, R@N at 25 m; the checkpoint with the best
R@1 (``model_best``, R@1 ≥ best) is the student they test. Applied where the config has the validation fields."""
PAPER_METHODS = ("netvlad", "mixvpr", "anyloc", "salad", "cricavpr")
"""The five methods of the paper; any other method under ``paper`` gets the generic settings only."""


def protocol_defaults(protocol: str, spec: "EncoderSpec | None") -> dict[str, Any]:
    """Config defaults (dotted paths) of ``protocol``: the generic ones, the paper's validation, then the method's own."""
    out = dict(GENERIC_DEFAULTS.get(protocol, {}))
    if protocol == "paper":
        out.update(PAPER_VALIDATION)
    if spec is not None and protocol in spec.protocols:
        out.update(spec.protocols[protocol].run_defaults)
    return out


def protocol_degrade(spec: str, protocol: str, plugins: "Plugins") -> str:
    """The degradation spec under ``protocol``: the last stage (the image the authors wrote to a file) may take a suffix.

    ``res360p`` → ``res360p-q95`` under ``paper`` (their ``cv2.imwrite`` stores JPEG at quality 95); a stage
    followed by another keeps its form (``res270p+qp40``: the codec's frames are what is stored). A range stands
    for every value it draws (``res[18:22]p`` → ``res[18:22]p-q95``), and a choice ending the chain rewrites each
    option (``any(res20p,jpeg10)`` → ``any(res20p-q95,jpeg10)``). A spec it cannot read is returned as it is, for
    the parser to refuse.
    """
    if protocol == "upstream" or not isinstance(spec, str):
        return spec
    try:
        return _last_stage_suffixed(spec.strip(), protocol, plugins)
    except ConfigError:
        return spec


def _last_stage_suffixed(expression: str, protocol: str, plugins: "Plugins") -> str:
    terms = split_top(expression, "+", expression)
    last = terms[-1]
    choice = CHOICE.fullmatch(last)
    if choice:
        options = []
        for option in split_top(choice.group(1), ",", expression):
            weighted = WEIGHTED.fullmatch(option)
            weight, body = (weighted.group(1) + "*", weighted.group(2).strip()) if weighted else ("", option)
            options.append(weight + _last_stage_suffixed(body, protocol, plugins))
        terms[-1] = f"any({','.join(options)})"
    elif last:
        low = BRACKET.sub(lambda b: b.group(1).split(":")[0].strip(), last)  # a range as its low end, for matching
        for _, dspec, _ in plugins.degradations.items():
            suffix = dspec.protocols.get(protocol)
            if suffix and re.fullmatch(dspec.pattern, low) and not last.endswith(suffix):
                terms[-1] = last + suffix
                break
    changed = "+".join(terms)
    return changed if changed != "+".join(split_top(expression, "+", expression)) else expression


def protocol_notes(protocol: str, spec: "EncoderSpec | None") -> list[str]:
    """What ``protocol`` changes for this method, one line each (for reports and ``reproduce --dry-run``)."""
    if protocol == "upstream":
        return []
    notes = [f"protocol {protocol}: " + ", ".join(f"{k}={v}" for k, v in GENERIC_DEFAULTS.get(protocol, {}).items())]
    if spec is not None and protocol in spec.protocols:
        notes += list(spec.protocols[protocol].notes)
    elif spec is not None and protocol == "paper":
        notes.append(
            f"{spec.name}: not one of the paper's methods ({', '.join(PAPER_METHODS)}): the authors never ran it, so "
            "only the generic settings above apply and no published number compares with it"
        )
    return notes
