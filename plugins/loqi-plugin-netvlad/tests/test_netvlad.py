"""NetVLAD plugin: conformance kit, the layer's math, the official checkpoint layouts, cluster initialisation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loqi_core import build_model
from loqi_core.plugin import WeightsError
from loqi_core.testing import MethodTests, random_state_dict
from loqi_core.testing.tiny import write_vpr_folder
from loqi_plugin_netvlad.layer import NetVLAD

FIXTURE = Path(__file__).parent / "fixtures" / "pitts30k_vgg16_netvlad_keys.json"


class TestNetVLADMethod(MethodTests):
    method = "netvlad"
    image_size = (64, 64)
    descriptor_dim = 64 * 512
    official_keys = FIXTURE


def test_encoder_matches_torchvision_vgg16_features():
    from torchvision.models.vgg import cfgs, make_layers

    from loqi_plugin_netvlad.model import vgg16_conv5_3

    ours = {k: tuple(v.shape) for k, v in vgg16_conv5_3().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in make_layers(cfgs["D"])[:-2].state_dict().items()}
    assert ours == theirs
    assert isinstance(vgg16_conv5_3()[-1], torch.nn.Conv2d)  # conv5_3 itself: its ReLU is cut


def _naive_netvlad(x: torch.Tensor, conv_w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The textbook formula, one cluster and one location at a time."""
    x = F.normalize(x, dim=1)
    b, c, h, w = x.shape
    k = centroids.shape[0]
    out = torch.zeros(b, k, c, dtype=x.dtype)
    for n in range(b):
        feats = x[n].reshape(c, h * w).T
        logits = feats @ conv_w.reshape(k, c).T
        a = logits.softmax(dim=1)
        for j in range(k):
            out[n, j] = (a[:, j : j + 1] * (feats - centroids[j])).sum(0)
    out = F.normalize(out, dim=2).reshape(b, -1)
    return F.normalize(out, dim=1)


def test_layer_matches_textbook_formula():
    torch.manual_seed(0)
    layer = NetVLAD(dim=16, clusters=5).double()
    x = torch.randn(3, 16, 4, 6, dtype=torch.float64)
    expected = _naive_netvlad(x, layer.conv.weight.detach(), layer.centroids.detach())
    assert torch.allclose(layer(x), expected, atol=1e-10)


def test_layer_key_names_are_pytorch_netvlad_pool_keys():
    assert set(NetVLAD(512, 64).state_dict()) == {"conv.weight", "centroids"}


def _nanne_checkpoint(parallel: bool) -> dict:
    """The structure of pytorch-NetVlad's checkpoint.pth.tar, with numpy metadata as its training loop saves."""
    state = random_state_dict(FIXTURE, seed=1)
    if parallel:  # nn.DataParallel(model.encoder), nn.DataParallel(model.pool)
        state = {k.replace("encoder.", "encoder.module.", 1).replace("pool.", "pool.module.", 1): v for k, v in state.items()}
    recalls = {n: np.float64(0.5 + n / 100) for n in (1, 5, 10, 20)}
    return {"epoch": 30, "state_dict": state, "recalls": recalls, "best_score": recalls[5],
            "optimizer": {"state": {}, "param_groups": []}, "parallel": parallel}


@pytest.mark.parametrize("parallel", [False, True])
def test_pitts30k_checkpoint_layout_loads_strict(tmp_path, parallel):
    ckpt = _nanne_checkpoint(parallel)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)
    model = build_model("netvlad", weights=str(path), image_size=(64, 64))
    src = random_state_dict(FIXTURE, seed=1)
    assert torch.equal(model.encoder[28].weight, src["encoder.28.weight"])
    assert torch.equal(model.aggregator.centroids, src["pool.centroids"])
    assert torch.equal(model.aggregator.conv.weight, src["pool.conv.weight"])


def test_official_variant_from_cache_and_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as info:
        build_model("netvlad", weights="official")
    message = str(info.value)
    assert "17luTjZFCX639guSVy00OUtzfTQo4AMF2" in message
    assert str(tmp_path / "cache" / "weights" / "pytorch-netvlad_vgg16_pitts30k_checkpoint.pth.tar") in message
    target = tmp_path / "cache" / "weights" / "pytorch-netvlad_vgg16_pitts30k_checkpoint.pth.tar"
    target.parent.mkdir(parents=True)
    torch.save(_nanne_checkpoint(False), target)
    model = build_model("netvlad")  # "default" = the first declared variant, official
    assert model.info["weights"] == "official"
    assert torch.equal(model.aggregator.centroids, random_state_dict(FIXTURE, seed=1)["pool.centroids"])


def test_torchvision_imagenet_layout_converts_onto_the_encoder():
    from loqi_plugin_netvlad import WEIGHTS

    variant = next(w for w in WEIGHTS if w.name == "imagenet")
    enc = {k.replace("encoder.", "features.", 1): v for k, v in random_state_dict(FIXTURE).items() if k.startswith("encoder.")}
    full = {**enc, "classifier.0.weight": torch.zeros(4, 3), "classifier.0.bias": torch.zeros(4)}
    converted = variant.convert(full)
    model = build_model("netvlad", weights="random")
    model.encoder.load_state_dict(converted, strict=True)
    assert torch.equal(model.encoder[0].weight, enc["features.0.weight"])


def test_trainable_prefixes_are_conv5_and_netvlad():
    from loqi_core.plugin import get_plugins

    spec = get_plugins().method("netvlad")[0]
    model = build_model("netvlad", weights="random")
    picked = {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in spec.trainable)}
    expected = {f"encoder.{i}.{t}" for i in (24, 26, 28) for t in ("weight", "bias")} | {"aggregator.conv.weight", "aggregator.centroids"}
    assert picked == expected


def test_init_from_clusters_sets_alpha_and_sharp_assignments():
    rng = np.random.default_rng(0)
    dim, k = 8, 4
    centres = np.eye(dim, dtype=np.float32)[:k]
    features = centres[rng.integers(0, k, 400)] + rng.normal(0, 0.05, (400, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    layer = NetVLAD(dim, k)
    alpha = layer.init_from_clusters(centres, features)
    sims = np.sort(features @ centres.T, axis=1)
    assert alpha == pytest.approx(-math.log(0.01) / np.mean(sims[:, -1] - sims[:, -2]), rel=1e-5)
    # a feature sitting on centre j is assigned to j with the rest sharing about 1 % or less each
    with torch.no_grad():
        logits = layer.conv(torch.from_numpy(centres)[:, :, None, None]).flatten(1)
    assign = logits.softmax(dim=1)
    assert torch.equal(assign.argmax(dim=1), torch.arange(k))
    assert (assign.diagonal() > 0.9).all()


def test_kmeans_recovers_separated_centres():
    from loqi_plugin_netvlad.clusters import kmeans

    rng = np.random.default_rng(1)
    centres = np.eye(6, dtype=np.float32)[:3] * 5
    data = centres[rng.integers(0, 3, 300)] + rng.normal(0, 0.1, (300, 6)).astype(np.float32)
    found = kmeans(data, 3, niter=20, seed=0)
    dist = np.linalg.norm(found[:, None] - centres[None], axis=2)
    assert sorted(dist.argmin(axis=1).tolist()) == [0, 1, 2] and dist.min(axis=1).max() < 0.1


def test_init_clusters_command_writes_a_loadable_checkpoint(tmp_path):
    from click.testing import CliRunner

    from loqi_plugin_netvlad.cli import netvlad_group

    data = write_vpr_folder(tmp_path / "data", places=10, size=(64, 80))
    out = tmp_path / "init"
    result = CliRunner().invoke(netvlad_group, [
        "init-clusters", "--dataset", f"folder:{data}", "--split", "test", "--weights", "random",
        "--clusters", "8", "--images", "10", "--per-image", "20", "--niter", "10", "--device", "cpu", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["netvlad_init"]["features"] == 10 * 20 and meta["netvlad_init"]["alpha"] > 0
    model = build_model("netvlad", weights=str(out), aggregator_params={"clusters": 8})
    centroids = model.aggregator.centroids.detach()
    # k-means centres of unit-length features lie inside the unit ball (random init is U[0,1) per coordinate)
    assert centroids.shape == (8, 512) and (centroids.norm(dim=1) <= 1.0 + 1e-4).all()
    unit = F.normalize(centroids, dim=1)
    w = model.aggregator.conv.weight.detach().reshape(8, 512)
    assert torch.allclose(w, meta["netvlad_init"]["alpha"] * unit, atol=1e-4)


def test_init_clusters_refuses_a_method_without_netvlad(tmp_path):
    from click.testing import CliRunner

    from loqi_core.cli import LoqiGroup
    from loqi_core.testing import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin
    from loqi_plugin_netvlad.cli import netvlad_group

    group = LoqiGroup("loqi", commands={"netvlad": netvlad_group})
    with isolated_plugins(("tiny", tiny_plugin)):
        result = CliRunner().invoke(group, [
            "netvlad", "init-clusters", "--method", "tiny", "--weights", "random",
            "--dataset", f"folder:{tmp_path}", "-o", str(tmp_path / "x"),
        ])
    assert result.exit_code != 0 and "does not use a NetVLAD aggregator" in result.output
