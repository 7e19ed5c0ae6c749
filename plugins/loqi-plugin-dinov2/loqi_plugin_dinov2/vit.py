"""DINOv2 ViT backbones built from timm modules, run the way the official (torch.hub) DINOv2 runs them.

Why not ``timm_model(x)``: the VPR methods need what timm's forward hides (the CLS token next to the
patch grid, an attention facet of an inner block, adapters inside blocks), and DINOv2's position
embedding is resized like the hub code does it (bicubic, scale factor (n + 0.1) / 37, no antialiasing),
which timm's dynamic-size path does not reproduce. Hub checkpoints name their keys like timm's, except
for the SwiGLU FFN of ViT-g (``mlp.w12``/``mlp.w3`` → ``mlp.fc1``/``mlp.fc2``) and the unused ``mask_token``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from loqi_core.plugin import ConfigError

Arch = Literal["vits14", "vitb14", "vitl14", "vitg14"]
PATCH = 14
ARCHS: dict[str, tuple[str, int]] = {
    "vits14": ("vit_small_patch14_dinov2", 384),
    "vitb14": ("vit_base_patch14_dinov2", 768),
    "vitl14": ("vit_large_patch14_dinov2", 1024),
    "vitg14": ("vit_giant_patch14_dinov2", 1536),
}


def create_vit(arch: str, depth: int | None = None, embed_dim: int | None = None, num_heads: int | None = None) -> nn.Module:
    """A randomly initialised timm DINOv2 ViT (518² position grid, no head); overrides shrink it for tests.

    ViT-g's SwiGLU hidden width follows the hub rule ((⌊4·d·2/3⌋ + 7) // 8 · 8) for any ``embed_dim``.
    """
    import timm

    if arch not in ARCHS:
        raise ConfigError(f'encoder_params.arch: unknown DINOv2 architecture "{arch}" (known: {", ".join(ARCHS)})')
    name, dim = ARCHS[arch]
    kwargs: dict[str, Any] = {}
    if depth is not None:
        kwargs["depth"] = depth
    if embed_dim is not None:
        kwargs["embed_dim"] = embed_dim
        dim = embed_dim
    if num_heads is not None:
        kwargs["num_heads"] = num_heads
    if arch == "vitg14":
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        kwargs["mlp_ratio"] = 2 * hidden / dim
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=0, img_size=518, dynamic_img_size=True, **kwargs)
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"encoder_params: cannot build {arch} with {kwargs}: {exc}") from None
    return vit


def hub_to_timm(state: dict[str, torch.Tensor], src: str = "", dst: str = "", drop: tuple[str, ...] = ("mask_token",)) -> dict[str, torch.Tensor]:
    """Keys under ``src`` in hub DINOv2 naming → ``dst`` + timm naming; names listed in ``drop`` are left out.

    Keys outside ``src`` are returned unchanged (callers map the rest of a method's checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(src):
            out[key] = value
            continue
        name = key[len(src):]
        if any(name == d or name.startswith(d + ".") for d in drop):
            continue
        name = name.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[dst + name] = value
    return out


def interpolate_pos_embed(pos_embed: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """The (1, 1 + h·w, C) position embedding for an h×w patch grid, resized like the DINOv2 hub code."""
    n = pos_embed.shape[1] - 1
    side = int(round(n**0.5))
    if h == side and w == side:
        return pos_embed.to(dtype)
    cls_pe, grid = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic", align_corners=False)
    if grid.shape[-2:] != (h, w):  # the +0.1 offset makes floor() land on h, w; guard against surprises
        raise RuntimeError(f"position embedding resized to {tuple(grid.shape[-2:])}, expected {(h, w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    return torch.cat([cls_pe, grid], dim=1).to(dtype)


BlockFn = Callable[[nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]


class DinoV2(nn.Module):
    """A DINOv2 ViT (``self.vit``, timm modules): tokens, blocks and the final norm, step by step.

    Blocks before the first one with a trainable parameter run without autograd (no activations kept),
    so a student that trains only the last blocks costs what the method's own training costs.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.embed_dim: int = vit.embed_dim

    @staticmethod
    def grid(x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % PATCH or w % PATCH:
            raise ValueError(f"DINOv2 input sides must be multiples of {PATCH}, got {h}×{w} (set Preprocess.multiple_of)")
        return h // PATCH, w // PATCH

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + CLS token + position embedding: (B, 1 + h·w, C)."""
        h, w = self.grid(x)
        patches = self.vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        cls = self.vit.cls_token.to(patches.dtype).expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        return tokens + interpolate_pos_embed(self.vit.pos_embed, h, w, tokens.dtype)

    def _first_trainable(self, blocks: list[nn.Module]) -> int:
        stem = [self.vit.cls_token, self.vit.pos_embed, *self.vit.patch_embed.parameters()]
        if not torch.is_grad_enabled() or any(p.requires_grad for p in stem):
            return 0
        for i, blk in enumerate(blocks):
            if any(p.requires_grad for p in blk.parameters()):
                return i
        return len(blocks)

    def run(self, x: torch.Tensor, blocks: list[nn.Module] | None = None, block_fn: BlockFn | None = None) -> torch.Tensor:
        """Images → tokens after ``blocks`` (default: all), each run by ``block_fn(block, tokens, grid)``."""
        hw = self.grid(x)
        blocks = list(self.vit.blocks) if blocks is None else blocks
        step = block_fn or (lambda blk, t, _hw: blk(t))
        start = self._first_trainable(blocks)
        with torch.no_grad() if start > 0 else contextlib.nullcontext():
            t = self.tokens(x)
            for blk in blocks[:start]:
                t = step(blk, t, hw)
        for blk in blocks[start:]:
            t = step(blk, t, hw)
        return t

    @staticmethod
    def to_map(patch_tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, h·w, C) patch tokens → (B, C, h, w)."""
        b, _, c = patch_tokens.shape
        return patch_tokens.transpose(1, 2).reshape(b, c, *hw)
