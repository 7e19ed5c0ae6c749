"""``loqi_core.models.weights``: downloads through torch's own downloader (file:// URLs here, no network), retried on
network errors; torch.hub's copy of the same file is used instead of downloading again; hashes checked where known."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch.hub

from loqi_core.errors import WeightsError
from loqi_core.hooks.specs import WeightsSpec
from loqi_core.models import weights


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty loqi cache and torch hub dir, online, no waiting between attempts; counts the downloader's calls."""
    monkeypatch.setenv("LOQI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LOQI_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "RETRY_WAIT", 0.0)
    calls = []
    real = torch.hub.download_url_to_file

    def counting(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        return real(url, dst, hash_prefix=hash_prefix, progress=False)

    monkeypatch.setattr(torch.hub, "download_url_to_file", counting)
    return calls


def _release(tmp_path, name="release.pth", data=b"weights bytes"):
    path = tmp_path / "server" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_download_goes_through_torch_hub_then_the_cache_serves(tmp_path, env):
    release, sha = _release(tmp_path)
    spec = WeightsSpec("official", "w.pth", url=release.as_uri(), sha256=sha)
    path = weights.fetch_weights(spec)
    assert path == tmp_path / "cache" / "weights" / "w.pth" and path.read_bytes() == release.read_bytes()
    assert env == [release.as_uri()]
    assert weights.fetch_weights(spec) == path and len(env) == 1
    assert not list(path.parent.glob("*.partial"))


def test_a_file_already_in_torch_home_is_used_without_downloading(tmp_path, env):
    release, sha = _release(tmp_path, "dinov2_vitb14_pretrain.pth")
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(release.read_bytes())
    release.unlink()  # a download would fail now
    spec = WeightsSpec("official", "dinov2_vitb14_pretrain.pth", url=release.as_uri())
    assert weights.hub_path(spec) == hub and weights.local_weights(spec) == hub
    assert weights.fetch_weights(spec) == hub and env == []
    assert not (tmp_path / "cache" / "weights" / "dinov2_vitb14_pretrain.pth").exists()


def test_a_torch_home_file_with_another_hash_is_not_taken_for_the_same_file(tmp_path, env):
    release, sha = _release(tmp_path)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "release.pth"
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"another file of the same name")
    path = weights.fetch_weights(WeightsSpec("official", "w.pth", url=release.as_uri(), sha256=sha))
    assert path != hub and path.read_bytes() == release.read_bytes() and len(env) == 1


def test_network_errors_are_retried_then_reported(tmp_path, env, monkeypatch):
    release, sha = _release(tmp_path)
    spec = WeightsSpec("official", "w.pth", url=release.as_uri(), sha256=sha)
    counting = torch.hub.download_url_to_file
    failures = iter([urllib.error.URLError("connection reset"), ConnectionResetError("reset by peer")])

    def flaky(url, dst, hash_prefix=None, progress=True):
        error = next(failures, None)
        if error is not None:
            env.append("failed")
            raise error
        return counting(url, dst, hash_prefix=hash_prefix, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", flaky)
    assert weights.fetch_weights(spec).read_bytes() == release.read_bytes()
    assert env == ["failed", "failed", release.as_uri()]

    env.clear()
    gone = WeightsSpec("official", "gone.pth", url=(tmp_path / "server" / "gone.pth").as_uri())
    with pytest.raises(WeightsError, match=r"could not download .*gone.pth \(3 attempts\).*Put the file at"):
        weights.fetch_weights(gone)
    assert len(env) == weights.RETRIES == 3


def test_a_missing_url_is_not_retried(tmp_path, env, monkeypatch):
    def not_found(url, dst, hash_prefix=None, progress=True):
        env.append(url)
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(torch.hub, "download_url_to_file", not_found)
    with pytest.raises(WeightsError, match="HTTP Error 404"):
        weights.fetch_weights(WeightsSpec("official", "w.pth", url="https://example.invalid/w.pth"))
    assert len(env) == 1


def test_hashes_pinned_or_in_a_torchvision_name_are_checked_on_download(tmp_path, env):
    release, sha = _release(tmp_path, "resnet50-0676ba61.pth")  # not torchvision's bytes: the prefix cannot match
    spec = WeightsSpec("imagenet", "resnet50-0676ba61.pth", url=release.as_uri())
    assert weights.expected_sha256(spec) == "0676ba61"
    with pytest.raises(WeightsError, match="is not the expected file.*invalid hash value"):
        weights.fetch_weights(spec)
    assert len(env) == 1 and not list((tmp_path / "cache" / "weights").iterdir())
    named = tmp_path / "server" / f"good-{sha[:10]}.pth"
    named.write_bytes(release.read_bytes())
    assert weights.fetch_weights(WeightsSpec("imagenet", "good.pth", url=named.as_uri())).exists()
    assert weights.expected_sha256(WeightsSpec("official", "salad.ckpt", url="https://x/dino_salad.ckpt")) is None


def test_offline_error_names_both_places_the_file_may_go(tmp_path, env, monkeypatch):
    monkeypatch.setenv("LOQI_OFFLINE", "1")
    spec = WeightsSpec("official", "dinov2_vitb14_pretrain.pth", url="https://example.invalid/dinov2_vitb14_pretrain.pth")
    with pytest.raises(WeightsError) as info:
        weights.fetch_weights(spec)
    message = str(info.value)
    assert str(tmp_path / "cache" / "weights" / "dinov2_vitb14_pretrain.pth") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth") in message and env == []
