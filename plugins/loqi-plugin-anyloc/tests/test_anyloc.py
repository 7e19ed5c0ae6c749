"""AnyLoc: conformance kit on a reduced ViT-g (same naming), the full hub key set, VLAD maths, vocabularies, CLI."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from loqi_core import build_model
from loqi_core.plugin import ConfigError, WeightsError, get_plugins
from loqi_core.testing import MethodTests, random_state_dict
from loqi_core.testing.tiny import write_vpr_folder
from loqi_plugin_anyloc import AnyLocEncoderParams, VLADParams, _convert_hub, vocabulary_weights
from loqi_plugin_anyloc.model import AnyLocEncoder, HardVLAD, read_centers
from loqi_plugin_anyloc.vocab import kmeans_centers
from loqi_plugin_dinov2.testing import load_on_meta

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = {"depth": 4, "embed_dim": 64, "num_heads": 2, "layer": 2}


class TestAnyLocOnReducedViTg(MethodTests):
    """ViT-g naming (SwiGLU FFN) at 4 blocks × 64 channels, value facet of block 2, 4 random centres.

    The full ViT-g/14 (1.1 B parameters) is too big to instantiate in a CPU test with real values; its
    complete key set is checked on the meta device below.
    """

    method = "anyloc"
    encoder_params = SMALL
    aggregator_params = {"vocabulary": "random", "clusters": 4}
    image_size = (56, 70)
    descriptor_dim = 4 * 64
    official_keys = FIXTURES / "dinov2_vitg14_depth4_dim64.json"


def test_full_vitg14_hub_checkpoint_loads_strict_into_the_truncated_encoder():
    """All 567 keys of dinov2_vitg14_pretrain.pth: blocks 0–31 are loaded, the rest is discarded by name."""
    enc = load_on_meta(lambda: AnyLocEncoder(AnyLocEncoderParams()), FIXTURES / "dinov2_vitg14_official.json", _convert_hub)
    assert len(enc.backbone.vit.blocks) == 32
    names = [n for n, _ in enc.named_parameters()]
    assert "backbone.vit.blocks.31.attn.qkv.weight" in names
    assert not any(n.startswith("backbone.vit.blocks.31.mlp") or n.startswith("backbone.vit.norm") for n in names)


def test_discarding_on_load_stays_strict_for_everything_else():
    enc = AnyLocEncoder(AnyLocEncoderParams(**SMALL))
    state = _convert_hub(random_state_dict(FIXTURES / "dinov2_vitg14_depth4_dim64.json"))
    enc.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected"):
        enc.load_state_dict({**state, "backbone.vit.surprise": torch.zeros(1)}, strict=True)
    missing = {k: v for k, v in state.items() if k != "backbone.vit.blocks.2.attn.qkv.weight"}
    with pytest.raises(RuntimeError, match="Missing"):
        enc.load_state_dict(missing, strict=True)


def test_token_facet_keeps_the_whole_block_and_bad_layer_is_named():
    enc = AnyLocEncoder(AnyLocEncoderParams(**{**SMALL, "facet": "token"}))
    assert hasattr(enc.backbone.vit.blocks[2].mlp, "fc1")
    with pytest.raises(ConfigError, match="encoder_params.layer"):
        AnyLocEncoder(AnyLocEncoderParams(**{**SMALL, "layer": 4}))


def test_value_facet_is_the_last_third_of_qkv_per_patch_normalised():
    enc = AnyLocEncoder(AnyLocEncoderParams(**SMALL)).eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        latent = enc(x)
        t = enc.backbone.run(x, list(enc.backbone.vit.blocks)[:2])
        last = enc.backbone.vit.blocks[2]
        value = last.attn.qkv(last.norm1(t))[:, 1:, 128:]
    assert latent.shape == (1, 64, 2, 3)
    assert torch.allclose(latent.flatten(2).transpose(1, 2), F.normalize(value, dim=-1), atol=1e-6)


def test_vlad_by_hand():
    agg = HardVLAD(2, VLADParams(clusters=2, vocabulary="random"))
    agg.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # three descriptors: two nearest centre 0, one nearest centre 1 (cosine, centres normalised for assignment)
    d = torch.tensor([[1.0, 0.1], [1.0, -0.2], [0.1, 1.0]])
    x = d.T.reshape(1, 2, 1, 3)
    dn = F.normalize(d, dim=1)
    r0 = (dn[0] - agg.centers[0]) + (dn[1] - agg.centers[0])
    r1 = dn[2] - agg.centers[1]
    expected = F.normalize(torch.cat([F.normalize(r0, dim=0), F.normalize(r1, dim=0)]), dim=0)
    assert torch.allclose(agg(x)[0], expected, atol=1e-6)


def test_vlad_passes_gradients_to_the_descriptors():
    agg = HardVLAD(8, VLADParams(clusters=3, vocabulary="random"))
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    agg(x).pow(3).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_centres_are_a_buffer_that_moves_and_is_saved():
    agg = HardVLAD(8, VLADParams(clusters=3, vocabulary="random")).to(torch.float64)
    assert agg.centers.dtype == torch.float64 and "centers" in agg.state_dict()


def test_official_domain_offline_names_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path))
    monkeypatch.setenv("LOQI_OFFLINE", "1")
    spec = vocabulary_weights("urban")
    with pytest.raises(WeightsError) as info:
        HardVLAD(1536, VLADParams(vocabulary="urban"))
    assert spec.url in str(info.value) and str(tmp_path / "weights" / spec.filename) in str(info.value)
    assert spec.url == "https://github.com/AnyLoc/DINO/releases/download/v1/dinov2_vitg14_l31_value_c32_urban_c_centers.pt"
    (tmp_path / "weights").mkdir()
    centres = torch.randn(32, 1536)
    torch.save(centres, tmp_path / "weights" / spec.filename)
    assert torch.equal(HardVLAD(1536, VLADParams(vocabulary="urban")).centers, centres)


def test_vocabulary_shape_errors():
    with pytest.raises(ConfigError, match="32×1536"):
        HardVLAD(64, VLADParams(vocabulary="indoor"))


def test_vocabulary_files_pt_npy_and_wrong_shape(tmp_path):
    c = torch.randn(4, 8)
    torch.save(c, tmp_path / "c.pt")
    np.save(tmp_path / "c.npy", c.numpy())
    for name in ("c.pt", "c.npy"):
        assert torch.equal(HardVLAD(8, VLADParams(clusters=4, vocabulary=str(tmp_path / name))).centers, c)
    with pytest.raises(WeightsError, match="needs"):
        HardVLAD(8, VLADParams(clusters=5, vocabulary=str(tmp_path / "c.pt")))
    with pytest.raises(WeightsError, match="not found"):
        read_centers(tmp_path / "missing.pt")


def test_kmeans_finds_separated_clusters_and_keeps_member_means():
    rng = np.random.default_rng(0)
    dirs = np.eye(6, dtype=np.float32)[:3]
    x = np.concatenate([d + 0.05 * rng.standard_normal((200, 6)).astype(np.float32) for d in dirs])
    centers = kmeans_centers(x, 3, niter=20).numpy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    best = (centers / np.linalg.norm(centers, axis=1, keepdims=True)) @ dirs.T
    assert sorted(best.argmax(1).tolist()) == [0, 1, 2]
    labels = (xn @ (centers / np.linalg.norm(centers, axis=1, keepdims=True)).T).argmax(1)
    for k in range(3):
        assert np.allclose(centers[k], xn[labels == k].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="cannot make"):
        kmeans_centers(x[:2], 3)


def test_method_facts():
    spec, _ = get_plugins().method("anyloc")
    assert spec.default_loss == "ickd+triplet" and spec.preprocess.multiple_of == 14
    assert spec.weights[0].scope == "encoder" and spec.weights[0].url.endswith("dinov2_vitg14_pretrain.pth")


def test_vocab_command_builds_a_file_the_aggregator_loads(tmp_path):
    from loqi_plugin_anyloc.cli import anyloc_group

    root = write_vpr_folder(tmp_path / "data", places=6, size=(32, 48))
    out = tmp_path / "vocab.safetensors"
    result = CliRunner().invoke(anyloc_group, [
        "vocab", "--dataset", f"folder:{root}", "--weights", "random", "--encoder-params",
        '{"depth": 2, "embed_dim": 32, "num_heads": 2, "layer": 1}', "--clusters", "4", "--niter", "5", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "36 descriptors" in result.output  # 6 database images × (28×42 → 2×3 patches)
    from safetensors.torch import load_file

    centres = load_file(str(out))["centers"]
    assert centres.shape == (4, 32)
    model = build_model("anyloc", weights="random", encoder_params={"depth": 2, "embed_dim": 32, "num_heads": 2, "layer": 1},
                        aggregator_params={"clusters": 4, "vocabulary": str(out)})
    assert torch.equal(model.aggregator.centers, centres)


def test_vocab_command_is_on_the_loqi_command_line():
    from loqi_core.cli import cli

    get_plugins().add_commands(cli)
    result = CliRunner().invoke(cli, ["anyloc", "vocab", "--help"])
    assert result.exit_code == 0 and "FAISS k-means" in result.output


@pytest.mark.slow
def test_distillation_with_the_default_loss_trains_the_backbone_not_the_vocabulary(tmp_path):
    """Two engine steps of ickd+triplet on a reduced AnyLoc: places from @east@north@ names, VLAD gradients."""
    import json

    from PIL import Image

    from loqi_core import distill
    from loqi_core.testing import random_images

    images = tmp_path / "train"
    images.mkdir()
    for i, img in enumerate(random_images(16, 56, 56, seed=2)):
        east = 500000.0 + 100.0 * (i // 4)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(images / f"@{east:.1f}@4000000.0@@@@@@@{i:03d}@.jpg")
    enc = {"depth": 2, "embed_dim": 32, "num_heads": 2, "layer": 1}
    agg = {"clusters": 4, "vocabulary": "random"}
    teacher = build_model("anyloc", weights="random", encoder_params=enc, aggregator_params=agg)
    student = distill(
        teacher, "jpeg10", train=f"folder:{images}", out=tmp_path / "run", device="cpu", places_per_batch=3,
        images_per_place=4, max_steps=2, num_workers=0, lr=1e-3, log_every=1,
    )  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["loss"] == "ickd+triplet" and set(summary["final_terms"]) >= {"ickd", "triplet"}
    assert torch.equal(student.aggregator.centers, teacher.aggregator.centers)
    assert summary["trainable_parameters"] == sum(p.numel() for p in student.encoder.parameters())


@pytest.mark.parametrize("h,w", [(1100, 733), (480, 1030)])
def test_paper_protocol_downscales_without_antialiasing_like_the_authors(h, w):
    """jamesjin0516/AnyLoc feature_extract.py as facts: ToTensor+Normalize, downscale above 1024 px (bicubic on the
    tensor, antialias off, other side int()-truncated), CenterCrop((h//14·14, w//14·14))."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from loqi_core.plugin import IMAGENET_MEAN, IMAGENET_STD, preprocess_images
    from loqi_core.testing import random_images

    spec = get_plugins().encoder("anyloc")
    img = random_images(1, h, w, seed=w)[0]
    x = TF.normalize(img.float()[None] / 255, IMAGENET_MEAN, IMAGENET_STD)
    nh, nw = (1024, int(w * 1024 / h)) if h >= w else (int(h * 1024 / w), 1024)
    x = TF.resize(x, (nh, nw), interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    authors = T.CenterCrop((nh // 14 * 14, nw // 14 * 14))(x)
    got = preprocess_images(img[None], spec.protocols["paper"].preprocess)
    assert got.shape == authors.shape and torch.allclose(got, authors, atol=1e-5)
    upstream = preprocess_images(img[None], spec.preprocess)
    assert upstream.shape != authors.shape or (upstream - authors).abs().max() > 0.05


def test_paper_protocol_uses_the_indoor_vocabulary():
    from loqi_core.plugin import resolve_run_config

    paper = resolve_run_config(None, {"model.method": "anyloc", "protocol": "paper"})
    assert paper.model.aggregator_params["vocabulary"] == "indoor"
    assert resolve_run_config(None, {"model.method": "anyloc"}).model.aggregator_params == {}
    assert VLADParams().vocabulary == "urban"
