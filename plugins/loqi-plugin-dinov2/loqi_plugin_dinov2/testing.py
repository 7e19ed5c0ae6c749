"""Test helpers for the DINOv2-family plugins: strict loads of full-size official key sets on the meta device.

A full ViT-B (86 M parameters) or ViT-g (1.1 B) with random values is too big for a fast CPU test; on the
meta device the model and a state dict built from a {key: shape} fixture cost no memory, and a strict
``load_state_dict`` still checks every name and shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def meta_state_dict(fixture: str | Path) -> dict[str, Any]:
    """Meta tensors with the names and shapes of a JSON fixture ({key: shape})."""
    import torch

    shapes = json.loads(Path(fixture).read_text())
    return {k: torch.empty(shape, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for k, shape in shapes.items()}


def load_on_meta(build: Callable[[], Any], fixture: str | Path, convert: Callable[[dict], dict]) -> Any:
    """Build a module on the meta device and strictly load the converted fixture; raises on any mismatch."""
    import torch

    with torch.device("meta"):
        module = build()
    module.load_state_dict(convert(meta_state_dict(fixture)), strict=True, assign=True)
    return module
