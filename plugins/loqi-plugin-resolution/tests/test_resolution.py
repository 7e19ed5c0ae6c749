"""resNp, scaleF, WxH: the conformance kit, output sizes, each interpolation against an independent computation,
-back, the upsampling warning and the range errors."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from loqi_core import parse_degradation
from loqi_core.plugin import ConfigError
from loqi_core.testing import DegradationTests, random_images


class TestResolutionConformance(DegradationTests):
    specs = ["res24p", "res24p-bicubic", "scale0.5-area", "20x10", "res24p-back", "res30p-bicubic+jpeg50",
             "res[16:40]p", "scale[0.25:0.9]-area", "[10:30]x[8:20]", "any(res24p,scale0.5)+jpeg[30:50]"]
    bad_specs = ["res0p", "res99999p", "scale0", "scale1.5", "0x10", "10x0",
                 "res[40:16]p", "res[0:40]p", "scale[0:1]", "scale[0.5:1.5]", "[0:10]x10", "res[16:40]p-[1:2]"]


@pytest.mark.parametrize(
    ("spec", "size"),
    [("res24p", (24, 32)), ("res270p", (270, 360)), ("scale0.25", (12, 16)), ("scale0.3", (14, 19)), ("20x10", (10, 20)),
     ("res24p-back", (48, 64)), ("scale0.5-bicubic-back", (48, 64))],
)
def test_output_size(spec, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = parse_degradation(spec)(random_images(2, 48, 64, seed=0))
    assert [tuple(o.shape[-2:]) for o in out.images] == [size, size]
    assert out.nbytes is None


def test_area_is_the_block_mean_for_integer_factors():
    img = random_images(1, 48, 64, seed=3)[0]
    got = parse_degradation("scale0.25-area")([img]).images[0]
    expected = img.double().reshape(3, 12, 4, 16, 4).mean(dim=(2, 4))
    assert torch.equal(got, expected.round().to(torch.uint8))


def test_bilinear_samples_half_pixel_centres_without_antialiasing():
    """Halving with bilinear (cv2 INTER_LINEAR semantics) averages the 2×2 block around each source centre."""
    img = random_images(1, 16, 16, seed=1)[0]
    got = parse_degradation("8x8-bilinear")([img]).images[0]
    block = img.double().reshape(3, 8, 2, 8, 2).mean(dim=(2, 4))
    assert (got.int() - block.round().int()).abs().max() <= 1
    # a factor of 4 without antialiasing reads only the 2×2 pixels at the centre of each 4×4 block
    got4 = parse_degradation("4x4")([img]).images[0]
    centre = img.double()[:, 1::4, 1::4].add(img.double()[:, 2::4, 2::4]).add(img.double()[:, 1::4, 2::4]).add(img.double()[:, 2::4, 1::4]) / 4
    assert (got4.int() - centre.round().int()).abs().max() <= 1


def test_bicubic_antialiased_is_close_to_pillow():
    img = random_images(1, 96, 128, seed=2)[0]
    got = parse_degradation("res24p-bicubic")([img]).images[0]
    pil = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((32, 24), Image.BICUBIC)).astype(int)
    diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - pil)
    assert diff.mean() < 1.5, diff.mean()


def test_interpolations_differ():
    img = random_images(1, 48, 64, seed=4)
    outs = [parse_degradation(f"res16p-{m}")(img).images[0] for m in ("area", "bilinear", "bicubic")]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_back_loses_detail_but_keeps_size():
    img = random_images(1, 48, 64, seed=5)[0]
    back = parse_degradation("res12p-back")([img]).images[0]
    assert back.shape == img.shape and (back.int() - img.int()).abs().float().mean() > 1


def test_enlarging_warns_once():
    d = parse_degradation("res96p")
    with pytest.warns(UserWarning, match="enlarges 64×48 images to 128×96"):
        d(random_images(2, 48, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d(random_images(1, 48, 64))


@pytest.mark.parametrize(
    ("spec", "words"),
    [("res0p", "height: must be between 1 and 16384 pixels"), ("scale1.5", "factor: must be in (0, 1]"), ("0x10", "width: must be between 1")],
)
def test_range_errors_name_token_and_range(spec, words):
    with pytest.raises(ConfigError) as info:
        parse_degradation(spec)
    assert f'"{spec}"' in str(info.value) and words in str(info.value)


def test_q95_suffix_is_the_authors_imwrite_round_trip():
    """``-q95``: the bilinear (INTER_LINEAR-like) resize, then a JPEG file of quality 95 (cv2.imwrite's default) read back."""
    import io

    img = random_images(1, 48, 64, seed=5)[0]
    small = parse_degradation("res24p")([img]).images[0]
    buf = io.BytesIO()
    Image.fromarray(small.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=95)
    expected = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()).permute(2, 0, 1)
    got = parse_degradation("res24p-q95")([img]).images[0]
    assert torch.equal(got, expected)
    assert not torch.equal(got, small)  # the file step is lossy, so the suffix is not a no-op
    assert parse_degradation("scale0.5-bicubic-back-q95")([img]).images[0].shape == img.shape


def test_paper_protocol_adds_the_file_step_to_a_final_resolution_stage():
    from loqi_core.plugin import get_plugins, protocol_degrade

    p = get_plugins()
    assert protocol_degrade("res360p", "paper", p) == "res360p-q95"
    assert protocol_degrade("scale0.25-area", "paper", p) == "scale0.25-area-q95"
    assert protocol_degrade("res360p-q95", "paper", p) == "res360p-q95"
    assert protocol_degrade("res270p+qp40", "paper", p) == "res270p+qp40"  # the codec's frames are what is stored
    assert protocol_degrade("jpeg10", "paper", p) == "jpeg10"
    assert protocol_degrade("res360p", "upstream", p) == "res360p"
