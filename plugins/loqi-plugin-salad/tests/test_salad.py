"""SALAD: conformance kit on a ViT-S stand-in, the release's full key set, and the optimal-transport maths."""

from pathlib import Path

import pytest
import torch

from loqi_core.plugin import get_plugins
from loqi_core.testing import MethodTests
from loqi_plugin_dinov2.testing import load_on_meta
from loqi_plugin_salad import SaladEncoderParams, SaladParams
from loqi_plugin_salad.model import Salad, SaladEncoder, convert_official, log_optimal_transport

FIXTURES = Path(__file__).parent / "fixtures"


class TestSaladOnViTS(MethodTests):
    """ViT-S/14 (same naming, 384 channels) at 126×126 = 81 patches, enough for the 64 clusters."""

    method = "salad"
    encoder_params = {"arch": "vits14"}
    image_size = (126, 126)
    descriptor_dim = 64 * 128 + 256
    official_keys = FIXTURES / "salad_vits14.json"


def test_release_checkpoint_keys_load_strict_at_full_size():
    """All 188 keys of dino_salad.ckpt (recorded from the upstream model definition) onto ViT-B/14 + SALAD."""
    from torch import nn

    def build():
        model = nn.Module()
        model.encoder = SaladEncoder(SaladEncoderParams())
        model.aggregator = Salad(768, SaladParams())
        return model

    load_on_meta(build, FIXTURES / "salad_official.json", convert_official)


def test_method_facts():
    spec, agg = get_plugins().method("salad")
    assert spec.preprocess.size == (322, 322) and spec.default_loss == "ickd"
    assert spec.trainable[:4] == tuple(f"encoder.backbone.vit.blocks.{i}" for i in range(8, 12))
    assert "GPL-3.0" in spec.weights[0].license


def test_transport_plan_has_the_dust_bin_marginals():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 10, generator=g) * 3
    plan = log_optimal_transport(scores, torch.tensor(1.0), iters=200).exp()
    n, m = 10, 4
    # every patch carries mass 1 (the plan is scaled by n+m); clusters get 1 each, the dust bin n-m
    assert torch.allclose(plan.sum(1), torch.ones(2, n), atol=1e-5)
    assert torch.allclose(plan.sum(2), torch.tensor([1.0] * m + [n - m]).expand(2, -1), atol=1e-4)


def test_three_iterations_already_fix_the_patch_marginals():
    plan = log_optimal_transport(torch.randn(1, 8, 20), torch.tensor(0.5), iters=3).exp()
    assert torch.allclose(plan.sum(1), torch.ones(1, 20), atol=1e-5)


def test_fewer_patches_than_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="more patches than clusters"):
        log_optimal_transport(torch.randn(1, 64, 16), torch.tensor(1.0), iters=3)


def test_descriptor_layout_global_token_then_unit_clusters():
    agg = Salad(32, SaladParams(clusters=4, cluster_dim=8, token_dim=6, hidden=16)).eval()
    desc = agg((torch.randn(3, 32, 4, 4), torch.randn(3, 32)))
    assert desc.shape == (3, 6 + 4 * 8)
    # token and each of the 4 clusters are unit vectors before the final L2: each part has norm 1/sqrt(5)
    assert torch.allclose(desc[:, :6].norm(dim=1), torch.full((3,), 5**-0.5), atol=1e-5)
    local = desc[:, 6:].reshape(3, 8, 4)  # (l, m) order, as the release flattens it
    assert torch.allclose(local.norm(dim=1), torch.full((3, 4), 5**-0.5), atol=1e-5)


def test_dust_bin_is_a_parameter_the_release_names():
    agg = Salad(16, SaladParams(clusters=2, cluster_dim=4, token_dim=4, hidden=8))
    names = set(agg.state_dict())
    assert {"dust_bin", "score.0.weight", "score.3.weight", "cluster_features.3.bias", "token_features.2.weight"} <= names


def _authors_native(img: torch.Tensor, max_size: int = 1024) -> torch.Tensor:
    """jamesjin0516/salad feature_extract.py as facts: ToTensor+Normalize, downscale (bicubic, tensor, no antialias)
    when the long side exceeds max_image_size, the other side int()-truncated, then CenterCrop to multiples of 14."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from loqi_core.plugin import IMAGENET_MEAN, IMAGENET_STD

    x = TF.normalize(img.float()[None] / 255, IMAGENET_MEAN, IMAGENET_STD)
    h, w = x.shape[-2:]
    if max(h, w) > max_size:
        h, w = (max_size, int(w * max_size / h)) if h == max(h, w) else (int(h * max_size / w), max_size)
        x = TF.resize(x, (h, w), interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    return T.CenterCrop((h // 14 * 14, w // 14 * 14))(x)


@pytest.mark.parametrize("h,w", [(480, 640), (1100, 733), (301, 1500)])
def test_paper_protocol_is_native_resolution_cropped_to_multiples_of_14(h, w):
    from loqi_core.plugin import preprocess_images
    from loqi_core.testing import random_images

    spec = get_plugins().encoder("salad")
    img = random_images(1, h, w, seed=h)[0]
    got = preprocess_images(img[None], spec.protocols["paper"].preprocess)
    authors = _authors_native(img)
    assert got.shape == authors.shape
    assert torch.allclose(got, authors, atol=1e-5)
    assert spec.preprocess.size == (322, 322)  # upstream stays as the release runs it
