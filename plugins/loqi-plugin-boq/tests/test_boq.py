"""BoQ: conformance kit for the DINOv2 and ResNet-50 variants, release key sets, and the query maths."""

from pathlib import Path

import pytest
import torch

from loqi_core.plugin import get_plugins
from loqi_core.testing import MethodTests
from loqi_plugin_boq import BoQDinoEncoderParams, BoQParams
from loqi_plugin_boq.model import BoQ, BoQDinoEncoder, convert_official_dinov2
from loqi_plugin_dinov2.testing import load_on_meta

FIXTURES = Path(__file__).parent / "fixtures"


class TestBoQOnViTS(MethodTests):
    """ViT-S/14 stand-in (384 channels, the release's naming) on 56×56 images."""

    method = "boq"
    encoder_params = {"arch": "vits14"}
    image_size = (56, 56)
    descriptor_dim = 384 * 32
    official_keys = FIXTURES / "boq_dinov2_vits14.json"


class TestBoQResNet50(MethodTests):
    """The real ResNet-50/layer3 + BoQ-512 (about 20 M parameters) on 64×64 images: a 4×4 map."""

    method = "boq-r50"
    image_size = (64, 64)
    descriptor_dim = 512 * 32
    official_keys = FIXTURES / "boq_resnet50_official.json"


def test_release_dinov2_checkpoint_keys_load_strict_at_full_size():
    """All 231 keys of dinov2_12288.pth (recorded from the upstream model definition) onto ViT-B/14 + BoQ-384."""
    from torch import nn

    def build():
        model = nn.Module()
        model.encoder = BoQDinoEncoder(BoQDinoEncoderParams())
        model.aggregator = BoQ(768, BoQParams())
        return model

    load_on_meta(build, FIXTURES / "boq_dinov2_official.json", convert_official_dinov2)


def test_method_facts():
    plugins = get_plugins()
    boq, agg = plugins.method("boq")
    r50, agg_r50 = plugins.method("boq-r50")
    assert boq.preprocess.size == (322, 322) and r50.preprocess.size == (384, 384)
    assert agg.params().proj_channels == 384 and agg_r50.params().proj_channels == 512
    assert boq.weights[0].url.endswith("dinov2_12288.pth") and r50.weights[0].url.endswith("resnet50_16384.pth")


def test_queries_make_the_descriptor_independent_of_the_map_size():
    agg = BoQ(16, BoQParams(proj_channels=64, queries=4, layers=2, row_dim=3)).eval()
    with torch.no_grad():
        small, large = agg(torch.randn(2, 16, 3, 3)), agg(torch.randn(2, 16, 7, 5))
    assert small.shape == large.shape == (2, 64 * 3)


def test_descriptor_is_the_fc_over_concatenated_query_outputs():
    agg = BoQ(16, BoQParams(proj_channels=64, queries=4, layers=2, row_dim=3)).eval()
    x = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        t = agg.norm_input(agg.proj_c(x).flatten(2).transpose(1, 2))
        t, o1 = agg.boqs[0](t)
        _, o2 = agg.boqs[1](t)
        rows = agg.fc(torch.cat([o1, o2], dim=1).transpose(1, 2))
        assert torch.allclose(agg(x), torch.nn.functional.normalize(rows.flatten(1), dim=-1), atol=1e-6)


def test_proj_channels_must_give_whole_heads():
    with pytest.raises(ValueError, match="multiple of 64"):
        BoQ(16, BoQParams(proj_channels=96))
