"""AnyLoc-VLAD-DINOv2 as one ``nn.Module`` pair: a truncated DINOv2 facet extractor and hard-assignment VLAD.

Facts of the AnyLoc release: the facet is read from ``blocks[31].attn.qkv`` (its output's last third is the
value), the CLS token is dropped and each patch descriptor is L2-normalised; VLAD assigns a patch to the
centre of highest cosine similarity, sums (descriptor − centre) per centre, L2-normalises each centre's sum
and then the whole vector. Unlike the release's wrapper, the centres are a registered buffer, so ``.to()``
moves them and checkpoints carry them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loqi_core.plugin import ConfigError, WeightsError
from loqi_plugin_anyloc import DOMAINS, AnyLocEncoderParams, VLADParams, vocabulary_weights
from loqi_plugin_dinov2.vit import DinoV2, create_vit

FACETS = {"query": 0, "key": 1, "value": 2}
# parts of the facet block that a query/key/value facet never computes
UNUSED_IN_FACET_BLOCK = ("attn.proj", "ls1", "norm2", "mlp", "ls2")


class AnyLocEncoder(nn.Module):
    """Images (sides multiple of 14) → L2-normalised facet descriptors per patch (B, C, H/14, W/14).

    Only the blocks up to ``layer`` exist (and, for a qkv facet, only ``norm1`` and ``attn.qkv`` of that block),
    so distillation trains exactly the layers the descriptor depends on. Full-depth DINOv2 state dicts still
    load strictly: on load, the keys of the parts this truncated backbone never computes (later blocks, the
    final norm, the rest of the facet block) are discarded; every key it does need must be present.
    """

    def __init__(self, params: AnyLocEncoderParams) -> None:
        super().__init__()
        vit = create_vit(params.arch, params.depth, params.embed_dim, params.num_heads)
        depth = len(vit.blocks)
        if params.layer >= depth:
            raise ConfigError(f"encoder_params.layer: {params.layer} is past the last block of a {depth}-block {params.arch}")
        self.layer, self.facet = params.layer, params.facet
        vit.blocks = nn.Sequential(*list(vit.blocks)[: params.layer + 1])
        vit.norm = nn.Identity()
        if self.facet in FACETS:
            last = vit.blocks[params.layer]
            last.attn.proj = nn.Identity()
            for name in ("ls1", "norm2", "mlp", "ls2"):
                setattr(last, name, nn.Identity())
        self.backbone = DinoV2(vit)
        self.out_channels = self.backbone.embed_dim
        self._register_load_state_dict_pre_hook(self._drop_uncomputed_keys)

    def _drop_uncomputed_keys(self, state_dict, prefix, *args) -> None:
        vit = re.escape(prefix + "backbone.vit.")
        unused = [rf"{vit}norm\.", rf"{vit}blocks\.(\d+)\."]
        if self.facet in FACETS:
            parts = "|".join(re.escape(p) for p in UNUSED_IN_FACET_BLOCK)
            unused.append(rf"{vit}blocks\.{self.layer}\.(?:{parts})\.")
        for key in list(state_dict):
            for i, pattern in enumerate(unused):
                m = re.match(pattern, key)
                if m and (i != 1 or int(m.group(1)) > self.layer):
                    del state_dict[key]
                    break

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = self.backbone.grid(x)
        blocks = list(self.backbone.vit.blocks)
        if self.facet == "token":
            t = self.backbone.run(x, blocks)
        else:
            last = blocks[-1]
            t = self.backbone.run(x, blocks[:-1])
            qkv = last.attn.qkv(last.norm1(t))
            c = qkv.shape[-1] // 3
            i = FACETS[self.facet]
            t = qkv[..., i * c : (i + 1) * c]
        return self.backbone.to_map(F.normalize(t[:, 1:], dim=-1), hw)


def read_centers(path: str | Path) -> torch.Tensor:
    """A clusters×C tensor from a .pt (tensor, loaded with weights_only), .npy or .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"vocabulary file not found: {path}")
    try:
        if path.suffix == ".npy":
            import numpy as np

            centers = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            centers = tensors.get("centers", next(iter(tensors.values())) if len(tensors) == 1 else None)
            if centers is None:
                raise ValueError(f'expected one tensor or a "centers" tensor, found {sorted(tensors)}')
        else:
            centers = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, StopIteration) as exc:
        raise WeightsError(f"cannot read vocabulary {path}: {exc}") from None
    if not isinstance(centers, torch.Tensor) or centers.dim() != 2:
        raise WeightsError(f"vocabulary {path} must hold a 2-D clusters×channels tensor")
    return centers.float()


def resolve_vocabulary(params: VLADParams, channels: int) -> torch.Tensor:
    """The centres a ``vocabulary`` param names: an official domain (fetched and cached), a file, or random."""
    from loqi_core.plugin import fetch_weights

    shape = (params.clusters, channels)
    if params.vocabulary == "random":
        g = torch.Generator().manual_seed(0)
        return F.normalize(torch.randn(*shape, generator=g), dim=1)
    if params.vocabulary in DOMAINS:
        if shape != (32, 1536):
            raise ConfigError(
                f'aggregator_params.vocabulary: the official "{params.vocabulary}" centres are 32×1536 '
                f"(ViT-g/14 block 31 value); this model needs {shape[0]}×{shape[1]}. Build one with `loqi anyloc vocab`."
            )
        centers = read_centers(fetch_weights(vocabulary_weights(params.vocabulary)))
    else:
        centers = read_centers(params.vocabulary)
    if tuple(centers.shape) != shape:
        raise WeightsError(
            f"vocabulary {params.vocabulary} is {tuple(centers.shape)}, the model needs {shape} "
            "(aggregator_params.clusters × the encoder's channels)"
        )
    return centers


class HardVLAD(nn.Module):
    """Patch descriptors (B, C, h, w) → hard-assignment VLAD (B, K·C), intra-normalised and L2-normalised."""

    centers: torch.Tensor

    def __init__(self, in_channels: int, params: VLADParams) -> None:
        super().__init__()
        self.register_buffer("centers", resolve_vocabulary(params, in_channels))

    def assign(self, desc: torch.Tensor) -> torch.Tensor:
        """Index of the most cosine-similar centre for each descriptor (B, N, C) → (B, N)."""
        return (desc @ F.normalize(self.centers, dim=1).T).argmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = F.normalize(x.flatten(2).transpose(1, 2), dim=-1)  # B × N × C
        onehot = F.one_hot(self.assign(desc), self.centers.shape[0]).to(desc.dtype)  # B × N × K
        sums = onehot.transpose(1, 2) @ desc - onehot.sum(1)[..., None] * self.centers.to(desc.dtype)
        return F.normalize(F.normalize(sums, dim=2).flatten(1), dim=1)
