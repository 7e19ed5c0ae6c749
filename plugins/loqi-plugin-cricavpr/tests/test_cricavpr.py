"""CricaVPR: conformance kit (grouped and batch-independent modes), the release's key set, groups and regions."""

from pathlib import Path

import pytest
import torch

from loqi_core import build_model
from loqi_core.plugin import get_plugins
from loqi_core.testing import MethodTests, random_images, random_state_dict
from loqi_plugin_cricavpr import CricaEncoderParams, CricaParams
from loqi_plugin_cricavpr.model import CricaAggregator, CricaEncoder, convert_official, region_bounds
from loqi_plugin_dinov2.testing import load_on_meta

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "cricavpr_official.json"


class TestCricaVPROnViTS(MethodTests):
    """ViT-S/14 stand-in (384 channels, 4 blocks, adapters scaled with the width) on 56×56 images: a 4×4 patch grid."""

    method = "cricavpr"
    encoder_params = {"arch": "vits14", "depth": 4}
    image_size = (56, 56)
    descriptor_dim = 14 * 384
    batch_independent = False


class TestCricaVPRBatchIndependentMode(TestCricaVPROnViTS):
    aggregator_params = {"group_size": 1}
    batch_independent = True


def _full_model():
    from torch import nn

    model = nn.Module()
    model.encoder = CricaEncoder(CricaEncoderParams())
    model.aggregator = CricaAggregator(768, CricaParams())
    return model


def test_release_checkpoint_keys_load_strict_at_full_size():
    """All 668 keys of CricaVPR.pth (``module.`` + the upstream model definition's names) onto ViT-B/14."""
    load_on_meta(_full_model, OFFICIAL, convert_official)


@pytest.mark.slow
def test_release_layout_with_real_values_loads_and_runs(tmp_path):
    """The nested {"model_state_dict": ..., "epoch": ...} file, loaded through --weights PATH at full size."""
    path = tmp_path / "CricaVPR.pth"
    torch.save({"model_state_dict": random_state_dict(OFFICIAL), "epoch": 10}, path)
    model = build_model("cricavpr", weights=str(path)).eval()
    with torch.no_grad():
        latent, desc = model(model.prepare(random_images(2, 240, 320)))
    assert latent.shape == (2, 768, 16, 16) and desc.shape == (2, 10752)
    assert torch.allclose(model.aggregator.gem.p, random_state_dict(OFFICIAL)["module.aggregation.1.p"])


def test_region_bounds_match_the_release_slices_at_224():
    assert region_bounds(16, 2) == [0, 8, 16]
    assert region_bounds(16, 3) == [0, 5, 11, 16]
    assert region_bounds(4, 3) == [0, 1, 3, 4]


def test_groups_attend_within_themselves_only():
    torch.manual_seed(0)
    agg = CricaAggregator(32, CricaParams(group_size=2, heads=4, feedforward=64)).eval()
    feats = (torch.randn(4, 32, 4, 4), torch.randn(4, 32))
    with torch.no_grad():
        grouped = agg(feats)
        first = agg((feats[0][:2], feats[1][:2]))
        second = agg((feats[0][2:], feats[1][2:]))
        agg.group_size = 0
        whole = agg(feats)
    assert torch.allclose(grouped, torch.cat([first, second]), atol=1e-6)
    assert not torch.allclose(grouped, whole, atol=1e-4), "cross-image attention had no effect"


def test_token_order_cls_first_then_regions():
    agg = CricaAggregator(32, CricaParams(heads=4, feedforward=64))
    patches = torch.rand(1, 32, 6, 6)
    cls = torch.randn(1, 32)
    tokens = agg.region_tokens(patches, cls)
    assert tokens.shape == (1, 14, 32) and torch.equal(tokens[:, 0], cls)
    x = torch.nn.functional.normalize(patches, dim=1)
    top_left_2x2 = x[..., :3, :3].pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    bottom_right_3x3 = x[..., 4:, 4:].pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    assert torch.allclose(tokens[:, 1], top_left_2x2, atol=1e-6)
    assert torch.allclose(tokens[:, 13], bottom_right_3x3, atol=1e-6)


def test_adapters_sit_in_every_block_and_change_the_output():
    enc = CricaEncoder(CricaEncoderParams(arch="vits14", depth=2)).eval()
    assert all(hasattr(b, "adapter") for b in enc.backbone.vit.blocks)
    x = torch.randn(1, 3, 42, 42)
    with torch.no_grad():
        with_adapter = enc(x)[0]
        enc.scale = 0.0
        without = enc(x)[0]
    assert not torch.allclose(with_adapter, without)


def test_method_facts_and_deterministic_eval_batch():
    spec, _ = get_plugins().method("cricavpr")
    assert spec.preprocess.size == (224, 224) and spec.default_loss == "ickd"
    assert spec.run_defaults["eval.batch_size"] == CricaParams().group_size == 16


def test_paper_protocol_crops_a_native_square_as_the_authors_centercrop():
    """The authors: side = min(H, W)//14·14, transforms.CenterCrop((side, side)) on the normalised tensor, no resize."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from loqi_core.plugin import IMAGENET_MEAN, IMAGENET_STD, preprocess_images

    spec = get_plugins().encoder("cricavpr")
    pp = spec.protocols["paper"].preprocess
    for h, w in ((133, 100), (100, 133), (120, 181), (98, 98)):  # 133: offset (133-98)/2 = 17.5, rounded to 18
        img = random_images(1, h, w, seed=h + w)[0]
        normalised = TF.normalize(img.float()[None] / 255, IMAGENET_MEAN, IMAGENET_STD)
        side = min(h, w) // 14 * 14
        authors = T.CenterCrop((side, side))(normalised)
        got = preprocess_images(img[None], pp)
        assert got.shape == authors.shape and torch.equal(got, authors), (h, w)
    floored = preprocess_images(random_images(1, 133, 100, seed=233)[0][None], pp.model_copy(update={"rounding": "loqi"}))
    assert not torch.equal(floored, T.CenterCrop((98, 98))(TF.normalize(random_images(1, 133, 100, seed=233)[0].float()[None] / 255, IMAGENET_MEAN, IMAGENET_STD)))


def test_paper_protocol_uses_the_release_fixed_region_slices():
    """network.py slices x_p[:, :, 0:8, 0:8], ..., x_p[:, :, 11:, 11:] whatever the grid (here 20×20)."""
    agg = CricaAggregator(32, CricaParams(heads=4, feedforward=64, regions="fixed"))
    patches, cls = torch.rand(2, 32, 20, 20), torch.randn(2, 32)
    tokens = agg.region_tokens(patches, cls)
    x = torch.nn.functional.normalize(patches, dim=1)
    gem = lambda r: r.clamp(min=1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3)  # noqa: E731
    slices2 = [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(8, None)), (slice(8, None), slice(0, 8)), (slice(8, None), slice(8, None))]
    thirds = (slice(0, 5), slice(5, 11), slice(11, None))
    expected = [cls] + [gem(x[..., r, c]) for r, c in slices2] + [gem(x[..., r, c]) for r in thirds for c in thirds]
    assert torch.allclose(tokens, torch.stack(expected, dim=1), atol=1e-6)
    scaled = CricaAggregator(32, CricaParams(heads=4, feedforward=64)).region_tokens(patches, cls)
    assert not torch.allclose(tokens, scaled, atol=1e-3)
    with pytest.raises(ValueError, match="at least 12×12"):
        agg.region_tokens(torch.rand(1, 32, 11, 16), torch.randn(1, 32))


def test_paper_protocol_config_defaults():
    from loqi_core.plugin import resolve_run_config

    c = resolve_run_config(None, {"model.method": "cricavpr", "protocol": "paper"})
    assert c.model.aggregator_params == {"regions": "fixed", "group_size": 0} and c.eval.batch_size == 100
    assert resolve_run_config(None, {"model.method": "cricavpr"}).eval.batch_size == 16
