"""MixVPR plugin: conformance kit at a small input, the official checkpoint layouts, the aggregator's math."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loqi_core import build_model
from loqi_core.plugin import get_plugins
from loqi_core.testing import MethodTests, random_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "mixvpr_resnet50_4096_keys.json"


class TestMixVPRMethod(MethodTests):
    """64×64 inputs give 4×4 layer3 maps, so the aggregator is built for 4×4; the official 20×20 layout is
    checked at 320×320 by ``test_official_checkpoint_loads_strict_at_320`` below."""

    method = "mixvpr"
    image_size = (64, 64)
    aggregator_params = {"in_h": 4, "in_w": 4}
    descriptor_dim = 4096


def _official(dim: int) -> dict:
    """The official state dict of the 4096-, 512- or 128-d model (they differ only in the two projections)."""
    shapes = dict(__import__("json").loads(FIXTURE.read_text()))
    channels, rows = {4096: (1024, 4), 512: (256, 2), 128: (64, 2)}[dim]
    shapes.update({"aggregator.channel_proj.weight": [channels, 1024], "aggregator.channel_proj.bias": [channels],
                   "aggregator.row_proj.weight": [rows, 400], "aggregator.row_proj.bias": [rows]})
    return random_state_dict(shapes, seed=dim)


@pytest.fixture(scope="module")
def photo_320():
    from loqi_core.testing import random_images

    return random_images(1, 320, 320, seed=3)


@pytest.mark.parametrize(("method", "dim"), [("mixvpr", 4096), ("mixvpr-512", 512), ("mixvpr-128", 128)])
def test_official_checkpoint_loads_strict_at_320(tmp_path, photo_320, method, dim):
    state = _official(dim)
    path = tmp_path / f"mixvpr_{dim}.ckpt"
    torch.save(state, path)
    model = build_model(method, weights=str(path)).eval()
    assert torch.equal(model.encoder.layer3[5].conv3.weight, state["backbone.model.layer3.5.conv3.weight"])
    assert torch.equal(model.aggregator.row_proj.weight, state["aggregator.row_proj.weight"])
    x = model.prepare(photo_320)
    assert x.shape[-2:] == (320, 320)
    with torch.no_grad():
        latent, desc = model(x)
    assert latent.shape == (1, 1024, 20, 20)
    assert desc.shape == (1, dim) and torch.allclose(desc.norm(dim=1), torch.ones(1), atol=1e-5)


def test_a_checkpoint_of_another_size_is_refused_by_name(tmp_path):
    from loqi_core.plugin import WeightsError

    path = tmp_path / "mixvpr_512.ckpt"
    torch.save(_official(512), path)
    with pytest.raises(WeightsError, match="mixvpr"):
        build_model("mixvpr", weights=str(path))


def test_official_variant_offline_names_the_drive_file(tmp_path, monkeypatch):
    from loqi_core.plugin import WeightsError

    monkeypatch.setenv("LOQI_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        build_model("mixvpr-512", weights="official")
    assert "1khiTUNzZhfV2UUupZoIsPIbsMRBYVDqj" in str(info.value)
    assert "resnet50_MixVPR_512_channels(256)_rows(2).ckpt" in str(info.value)


def test_encoder_keys_are_torchvision_resnet50_up_to_layer3():
    from torchvision.models import resnet50

    from loqi_plugin_mixvpr.model import ResNet50Layer3

    ours = {k: tuple(v.shape) for k, v in ResNet50Layer3().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in resnet50().state_dict().items() if not k.startswith(("layer4.", "fc."))}
    assert ours == theirs


def test_imagenet_layout_converts_onto_the_encoder():
    from torchvision.models import resnet50

    variant = next(w for w in get_plugins().encoder("mixvpr").weights if w.name == "imagenet")
    full = resnet50().state_dict()
    model = build_model("mixvpr", weights="random")
    model.encoder.load_state_dict(variant.convert(full), strict=True)
    assert torch.equal(model.encoder.layer2[0].conv1.weight, full["layer2.0.conv1.weight"])


def test_aggregator_is_mixers_then_channel_then_row_projection():
    """Recompute the descriptor by hand from the aggregator's own weights."""
    spec = get_plugins().aggregator("mixvpr")
    agg = spec.factory(spec.params(in_h=3, in_w=2, out_channels=5, out_rows=2, mix_depth=2), in_channels=8).double().eval()
    for p in agg.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 8, 3, 2, dtype=torch.float64)
    h = x.reshape(2, 8, 6)
    for mixer in agg.mix:
        ln, fc1, _, fc2 = mixer.mix
        h = h + fc2(torch.relu(fc1(F.layer_norm(h, (6,), ln.weight, ln.bias))))
    h = torch.einsum("bcn,oc->bon", h, agg.channel_proj.weight) + agg.channel_proj.bias[None, :, None]  # B×C'×HW
    h = torch.einsum("bon,rn->bor", h, agg.row_proj.weight) + agg.row_proj.bias  # B×C'×R
    expected = F.normalize(h.reshape(2, -1), dim=1)
    assert torch.allclose(agg(x), expected, atol=1e-10)


def test_wrong_feature_map_size_says_what_to_change():
    spec = get_plugins().aggregator("mixvpr")
    agg = spec.factory(spec.params(), in_channels=16)
    with pytest.raises(ValueError, match="20×20"):
        agg(torch.randn(1, 16, 4, 4))


def test_method_facts():
    for name in ("mixvpr", "mixvpr-512", "mixvpr-128"):
        spec = get_plugins().method(name)[0]
        assert spec.preprocess.size == (320, 320) and spec.preprocess.interpolation == "bicubic"
        assert spec.default_loss == "ickd"
        assert spec.trainable == ("encoder.layer2", "encoder.layer3", "aggregator")
        assert [w.name for w in spec.weights] == ["official", "imagenet"]


def test_paper_protocol_is_the_authors_tensor_resize_without_antialiasing():
    """The authors: ToTensor, Normalize, then tvf.Resize((320, 320), bicubic, antialias=None) — off for tensors."""
    import torchvision.transforms.functional as TF

    from loqi_core.plugin import IMAGENET_MEAN, IMAGENET_STD, preprocess_images
    from loqi_core.testing import random_images

    spec = get_plugins().encoder("mixvpr")
    img = random_images(1, 480, 640, seed=2)[0]  # shrinking: antialiasing would matter
    normalised = TF.normalize(img.float()[None] / 255, IMAGENET_MEAN, IMAGENET_STD)
    authors = TF.resize(normalised, [320, 320], interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    paper = preprocess_images(img[None], spec.protocols["paper"].preprocess)
    upstream = preprocess_images(img[None], spec.preprocess)
    assert torch.allclose(paper, authors, atol=1e-5)
    assert (upstream - authors).abs().max() > 0.1
    model = build_model("mixvpr", weights="random", protocol="paper")
    assert model.preprocess == spec.protocols["paper"].preprocess
