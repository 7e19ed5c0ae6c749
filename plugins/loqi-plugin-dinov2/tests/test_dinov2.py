"""The shared DINOv2 backbone: hub key mapping (ViT-g's SwiGLU included), position embedding, no-grad prefix."""

from pathlib import Path

import pytest
import torch

from loqi_core.testing import random_state_dict
from loqi_plugin_dinov2.testing import load_on_meta, meta_state_dict
from loqi_plugin_dinov2.vit import DinoV2, create_vit, hub_to_timm, interpolate_pos_embed

FIXTURES = Path(__file__).parent / "fixtures"


def test_full_vitg14_hub_checkpoint_maps_strict_onto_timm_modules():
    """All 567 keys of Meta's dinov2_vitg14_pretrain.pth (names/shapes recorded from the hub model definition)."""
    load_on_meta(lambda: create_vit("vitg14"), FIXTURES / "dinov2_vitg14_official.json", lambda s: hub_to_timm(s))


def test_reduced_vitg14_with_real_values_loads_and_runs():
    """Same naming (SwiGLU w12/w3) on a 4-block, 64-wide ViT-g: real tensors load strict and give finite tokens."""
    vit = create_vit("vitg14", depth=4, embed_dim=64, num_heads=2)
    state = hub_to_timm(random_state_dict(FIXTURES / "dinov2_vitg14_depth4_dim64.json"))
    vit.load_state_dict(state, strict=True)
    assert torch.equal(vit.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])
    tokens = DinoV2(vit).eval().run(torch.randn(1, 3, 28, 42))
    assert tokens.shape == (1, 1 + 2 * 3, 64) and torch.isfinite(tokens).all()


def test_mapping_keeps_other_keys_and_drops_only_what_is_asked():
    state = {"x.mask_token": 1, "x.blocks.0.mlp.w12.weight": 2, "x.blocks.0.mlp.w3.bias": 3, "x.norm.weight": 4, "agg.p": 5}
    out = hub_to_timm(state, "x.", "y.", drop=("mask_token", "norm"))
    assert out == {"y.blocks.0.mlp.fc1.weight": 2, "y.blocks.0.mlp.fc2.bias": 3, "agg.p": 5}


def test_position_embedding_native_grid_is_unchanged_and_other_grids_resize():
    pe = torch.randn(1, 1 + 37 * 37, 8)
    assert torch.equal(interpolate_pos_embed(pe, 37, 37, torch.float32), pe)
    out = interpolate_pos_embed(pe, 23, 16, torch.float64)
    assert out.shape == (1, 1 + 23 * 16, 8) and out.dtype == torch.float64
    assert torch.equal(out[:, 0], pe[:, 0].double())
    const = torch.ones(1, 1 + 37 * 37, 4)
    assert torch.allclose(interpolate_pos_embed(const, 5, 9, torch.float32), torch.ones(1, 46, 4), atol=1e-5)


def test_sides_not_multiple_of_14_are_refused():
    with pytest.raises(ValueError, match="multiples of 14"):
        DinoV2.grid(torch.zeros(1, 3, 30, 28))


def test_frozen_leading_blocks_run_without_autograd_and_give_the_same_tokens():
    backbone = DinoV2(create_vit("vits14", depth=4)).eval()
    x = torch.randn(2, 3, 28, 28)
    full = backbone.run(x)
    for p in backbone.parameters():
        p.requires_grad_(False)
    for p in backbone.vit.blocks[3].parameters():
        p.requires_grad_(True)
    assert backbone._first_trainable(list(backbone.vit.blocks)) == 3
    partial = backbone.run(x)
    assert torch.allclose(full, partial) and partial.requires_grad
    partial.sum().backward()
    assert backbone.vit.blocks[3].attn.qkv.weight.grad is not None


def test_unknown_arch_is_rejected_by_the_params_model():
    from pydantic import ValidationError

    from loqi_plugin_dinov2 import DinoV2EncoderParams

    with pytest.raises(ValidationError, match="arch"):
        DinoV2EncoderParams(arch="vitx14")


def test_dinov2_encoder_gives_a_patch_map_and_takes_hub_weights():
    from loqi_core.plugin import get_plugins
    from loqi_plugin_dinov2 import DinoV2EncoderParams, _convert_hub
    from loqi_plugin_dinov2.encoder import PatchTokenEncoder

    spec = get_plugins().encoder("dinov2")
    enc = spec.factory(spec.params(arch="vits14", depth=2)).eval()
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 28, 42)).shape == (2, 384, 2, 3)
    # full ViT-g hub checkpoint through the encoder's own convert (encoder scope: keys relative to the encoder)
    load_on_meta(lambda: PatchTokenEncoder(DinoV2EncoderParams(arch="vitg14")), FIXTURES / "dinov2_vitg14_official.json", _convert_hub)


def test_meta_state_dict_shapes():
    sd = meta_state_dict(FIXTURES / "dinov2_vitg14_depth4_dim64.json")
    assert sd["pos_embed"].shape == (1, 1370, 64) and sd["pos_embed"].is_meta
