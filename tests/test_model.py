"""Model composition, preprocessing, weights fetching (cache, sha256, offline) and loqi checkpoints."""

import hashlib

import pytest
import torch

from loqi_core.errors import WeightsError
from loqi_core.hooks.specs import AggregatorSpec, EncoderSpec, Preprocess, WeightsSpec
from loqi_core.models.checkpoint import load_checkpoint, save_checkpoint
from loqi_core.models.model import build_model
from loqi_core.models.preprocess import preprocess_images
from loqi_core.models.weights import fetch_weights
from loqi_core.plugin import hookimpl
from loqi_core.testing import isolated_plugins, random_images
from loqi_core.testing.tiny import GeMParams, TinyEncoderParams, _encoder, _gem, tiny_plugin


@pytest.fixture
def tiny():
    with isolated_plugins(("tiny", tiny_plugin), entry_points=False) as plugins:
        yield plugins


def test_preprocess_resize_crop_multiple_and_normalise():
    img = torch.full((3, 40, 90), 255, dtype=torch.uint8)
    out = preprocess_images([img], Preprocess(size=(28, 28), mode="center_crop"))
    assert out.shape == (1, 3, 28, 28)
    assert torch.allclose(out[0, 0], torch.full((28, 28), (1 - 0.485) / 0.229), atol=1e-4)
    out = preprocess_images([img], Preprocess(max_side=45, multiple_of=14))
    assert out.shape == (1, 3, 14, 42)  # 40×90 → 20×45 → multiples of 14
    out = preprocess_images([torch.zeros(3, 32, 64, dtype=torch.uint8)], Preprocess(min_side=128))
    assert out.shape == (1, 3, 128, 256)  # tiny frames are enlarged for stride-32 encoders
    out = preprocess_images(torch.zeros(2, 3, 30, 30, dtype=torch.uint8), Preprocess(size=(16, 8)))
    assert out.shape == (2, 3, 16, 8)
    with pytest.raises(ValueError, match="different sizes"):
        preprocess_images([img, torch.zeros(3, 10, 10, dtype=torch.uint8)], Preprocess())


def test_build_model_outputs_latent_and_normalised_descriptor(tiny):
    model = build_model("tiny", weights="random").eval()
    latent, desc = model(model.prepare(random_images(3, 40, 50)))
    assert latent.shape == (3, 16, 8, 8) and desc.shape == (3, 16)
    assert torch.allclose(desc.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.info["weights"] == "random"


def test_method_without_weights_needs_an_explicit_choice(tiny):
    with pytest.raises(WeightsError, match="--weights random"):
        build_model("tiny")


def test_checkpoint_round_trip_and_refuses_another_method(tiny, tmp_path):
    model = build_model("tiny", weights="random")
    path = save_checkpoint(model, tmp_path / "run", {"step": 3})
    assert path.name == "model.safetensors" and path.with_suffix(".json").exists()
    other = build_model("tiny", weights="random")
    meta = load_checkpoint(other, tmp_path / "run")
    assert meta["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    again = build_model("tiny", weights=str(tmp_path / "run"))
    assert again.info["weights"].endswith("model.safetensors")
    wide = build_model("tiny", weights="random", encoder_params={"channels": 8})
    with pytest.raises(WeightsError, match="does not fit"):
        load_checkpoint(wide, path)
    (tmp_path / "run" / "model.json").write_text('{"method": "salad", "encoder": "salad", "aggregator": "salad"}')
    with pytest.raises(WeightsError, match='checkpoint of encoder "salad"'):
        load_checkpoint(other, path)


def _spec_with_weights(file_url, sha):
    def convert(state):  # the "official" file prefixes everything with net.
        return {k.removeprefix("net."): v for k, v in state.items()}

    weights = WeightsSpec("official", "tinyw.pth", url=file_url, sha256=sha, convert=convert)

    class P:
        pass

    P.loqi_register_encoders = hookimpl(
        lambda register: register(EncoderSpec("tinyw", lambda p: _encoder(TinyEncoderParams()), weights=(weights,)))
    )
    P.loqi_register_aggregators = hookimpl(
        lambda register: register(AggregatorSpec("tinyw", lambda p, in_channels: _gem(GeMParams(), in_channels)))
    )
    return P


def test_official_weights_download_verify_cache_and_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LOQI_OFFLINE", raising=False)
    with isolated_plugins(("tiny", tiny_plugin), entry_points=False):
        source = build_model("tiny", weights="random")
    release = tmp_path / "release.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, release)
    sha = hashlib.sha256(release.read_bytes()).hexdigest()

    with isolated_plugins(("tinyw", _spec_with_weights(release.as_uri(), sha)), entry_points=False):
        model = build_model("tinyw")  # downloads through urllib (file:// here), checks sha256, caches
        cached = tmp_path / "cache" / "weights" / "tinyw.pth"
        assert cached.exists() and model.info["weights"] == "official"
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
        release.unlink()
        build_model("tinyw")  # served from the cache now
        cached.write_bytes(b"corrupt")
        with pytest.raises(WeightsError, match="does not match the expected sha256"):
            build_model("tinyw")
        cached.unlink()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(WeightsError) as info:
            build_model("tinyw")
        assert str(cached) in str(info.value) and "Download them from" in str(info.value)


def test_unsafe_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    from loqi_core.models.weights import load_state_dict

    with pytest.raises(WeightsError, match="weights_only=True"):
        load_state_dict(path)


def test_fetch_weights_prefers_package_files(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"x")
    assert fetch_weights(WeightsSpec("imagenet", "w.bin", locate=lambda: target)) == target


def test_scope_encoder_weights_take_the_encoder_s_own_keys_and_a_mismatch_says_so_briefly(tmp_path):
    """docs/hooks.md: WeightsSpec(scope="encoder") loads into the encoder, so convert returns keys without "encoder."
    (issue #27: the guide said otherwise and the error was 2,000 characters of key names)."""
    path = tmp_path / "backbone.pth"
    scoped = type("Scoped", (), {
        "loqi_register_encoders": hookimpl(lambda register: register(EncoderSpec(
            "scoped", _encoder, TinyEncoderParams, preprocess=Preprocess(size=(32, 32)),
            weights=(WeightsSpec("official", "backbone.pth", scope="encoder", locate=lambda: path),)))),
        "loqi_register_aggregators": hookimpl(lambda register: register(AggregatorSpec("scoped", _gem, GeMParams))),
    })  # fmt: skip
    with isolated_plugins(("scoped", scoped), entry_points=False):
        encoder = build_model("scoped", weights="random", seed=1).encoder
        torch.save({f"encoder.{k}": v for k, v in encoder.state_dict().items()}, path)  # the prefix the guide once taught
        with pytest.raises(WeightsError) as info:
            build_model("scoped", weights="official")
        message = str(info.value)
        assert len(message) < 600
        assert "14 missing (first: 0.bias, 0.weight, 1.bias, 1.running_mean, ...); 16 unexpected (first: encoder.0" in message
        assert 'unexpected keys start with "encoder.": WeightsSpec(scope="encoder") loads into the encoder itself' in message
        torch.save(encoder.state_dict(), path)  # the encoder's own keys
        loaded = build_model("scoped", weights="official")
        assert torch.equal(loaded.encoder[0].weight, encoder[0].weight) and loaded.info["weights"] == "official"


def test_mixed_parts_that_do_not_fit_fail_at_build_time_in_one_line():
    """An aggregator of another method that cannot read the encoder's output is refused when the model is built
    (before any run directory or evaluation), naming both parts; parts that fit build as before."""
    from loqi_core.errors import ConfigError

    with pytest.raises(ConfigError, match='aggregator "mixvpr" cannot take the output of encoder "lite0-gem"'):
        build_model(encoder="lite0-gem", aggregator="mixvpr", weights="random", image_size=(128, 128))
    model = build_model(encoder="lite0-gem", aggregator="netvlad", weights="random", image_size=(128, 128))
    assert model.info["method"] == "lite0-gem+netvlad" and model.training  # the check leaves the train/eval mode
