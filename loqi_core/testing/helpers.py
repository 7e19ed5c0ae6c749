"""Small helpers for plugin tests: isolated plugin sets, random images, state dicts from key/shape fixtures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from loqi_core.hooks.manager import Plugins, get_plugins, reset_plugins


@contextlib.contextmanager
def isolated_plugins(*extra: tuple[str, Any], entry_points: bool = True) -> Iterator[Plugins]:
    """A fresh plugin set (defaults, installed entry points, plus ``(name, plugin)`` pairs) for one test."""
    previous = get_plugins()
    plugins = Plugins()
    plugins.load_defaults()
    if entry_points:
        plugins.load_entry_points()
    for name, plugin in extra:
        plugins.add(plugin, name=name, dist=f"test-{name}", version="0")
    reset_plugins(plugins)
    try:
        yield plugins
    finally:
        reset_plugins(previous)


def random_images(n: int, height: int, width: int, seed: int = 0) -> list:
    """``n`` uint8 RGB images 3×H×W with smooth structure (codecs behave as on photos, unlike pure noise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, max(2, height // 8), max(2, width // 8)), generator=g).float()
    smooth = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.randn(n, 3, height, width, generator=g) * 8
    return list((smooth + noise).clamp(0, 255).to(torch.uint8))


def random_state_dict(shapes: dict[str, list[int]] | str | Path, seed: int = 0) -> dict:
    """A state dict with the given key names and shapes (a dict, or a JSON fixture file) filled with random values."""
    import torch

    if not isinstance(shapes, dict):
        shapes = json.loads(Path(shapes).read_text())
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.02
    return out
