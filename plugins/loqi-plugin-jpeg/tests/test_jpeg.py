"""JPEG, WebP and AVIF: the conformance kit, equality with Pillow (the authors' tool), rate-distortion order,
range errors, missing codec support, and the nvJPEG path when a GPU is present."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, features

from loqi_core import parse_degradation
from loqi_core.plugin import ConfigError
from loqi_core.testing import DegradationTests, random_images

AVIF = features.check("avif")
WEBP = features.check("webp")


class TestJpegConformance(DegradationTests):
    specs = ["jpeg10", "jpeg90", "jpeg[5:50]", "any(1*jpeg10,0.5*jpeg90)"]
    specs += (["webp30", "webp[0:40]"] if WEBP else []) + (["avif30", "avif[10:40]"] if AVIF else [])
    bad_specs = ["jpeg0", "jpeg101", "webp101", "avif101", "jpeg[50:5]", "jpeg[0:200]", "webp[0:101]", "avif[-1:10]"]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse)


def test_cpu_jpeg_is_byte_identical_to_pillow():
    """The authors wrote PIL ``save(..., "JPEG", quality=10)``: the CPU path gives the same file and pixels."""
    images = random_images(3, 40, 56, seed=4)
    out = parse_degradation("jpeg10")(images)
    for img, got, nbytes in zip(images, out.images, out.nbytes):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=10)
        assert nbytes == len(buf.getvalue())
        pil = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert torch.equal(got, torch.from_numpy(pil.copy()).permute(2, 0, 1))


@pytest.mark.parametrize("family", ["jpeg", "webp", "avif"])
def test_lower_quality_costs_fewer_bytes_and_psnr(family):
    if family != "jpeg" and not features.check(family):
        pytest.skip(f"Pillow without {family}")
    images = random_images(2, 64, 96, seed=2)
    low, high = parse_degradation(f"{family}10")(images), parse_degradation(f"{family}80")(images)
    assert sum(low.nbytes) < sum(high.nbytes)
    assert np.mean([_psnr(a, b) for a, b in zip(images, low.images)]) < np.mean(
        [_psnr(a, b) for a, b in zip(images, high.images)]
    )


def test_output_keeps_size_and_order():
    images = [random_images(1, 24 + 8 * i, 40, seed=i)[0] for i in range(3)]
    out = parse_degradation("jpeg50")(images)
    assert [o.shape for o in out.images] == [i.shape for i in images]
    assert all(_psnr(a, b) > 25 for a, b in zip(images, out.images))


@pytest.mark.parametrize(("spec", "words"), [("jpeg0", "between 1 and 100"), ("jpeg250", "between 1 and 100"), ("webp101", "between 0 and 100")])
def test_range_error_names_token_and_range(spec, words):
    with pytest.raises(ConfigError) as info:
        parse_degradation(spec)
    assert f'"{spec}"' in str(info.value) and words in str(info.value)


def test_missing_pillow_codec_is_a_clear_error(monkeypatch):
    import loqi_plugin_jpeg.codecs as codecs

    monkeypatch.setattr(codecs.features, "check", lambda name: False)
    with pytest.raises(ConfigError, match="without AVIF support.*loqi-plugin-jpeg"):
        parse_degradation("avif30")


def test_rejects_float_images():
    with pytest.raises(ConfigError, match="uint8"):
        parse_degradation("jpeg10")([torch.zeros(3, 8, 8)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA GPU")
def test_nvjpeg_path_on_cuda_tensors():
    """CUDA tensors go through nvJPEG (batched) and stay on the GPU; close to, not bit-identical with, the CPU path."""
    images = random_images(4, 64, 96, seed=5)
    cpu = parse_degradation("jpeg10")(images)
    gpu = parse_degradation("jpeg10")([img.cuda() for img in images])
    assert all(img.is_cuda and img.dtype == torch.uint8 for img in gpu.images)
    for clean, a, b in zip(images, cpu.images, gpu.images):
        assert a.shape == b.shape
        assert abs(_psnr(clean, a) - _psnr(clean, b.cpu())) < 3.0
    assert all(abs(g - c) < 0.5 * c for g, c in zip(gpu.nbytes, cpu.nbytes))
