"""Video QP degradations: the conformance kit, a QP that is really constant (read back from what x264 and x265
report), rate-distortion order, frame alignment, padding, intra-only single images and the range errors."""

import csv

import numpy as np
import pytest
import torch

from loqi_core import parse_degradation
from loqi_core.plugin import ConfigError, DataError
from loqi_core.testing import DegradationTests, random_images
from loqi_plugin_video.codec import coded_size, encode_stream


class TestVideoConformance(DegradationTests):
    specs = ["qp40", "h264-qp40", "av1-qp50", "hevc-qp35-420", "res24p+qp40",
             "qp[30:45]", "h264-qp[30:45]", "av1-qp[40:60]", "res[16:32]p+qp[35:45]", "any(qp40,h264-qp[35:45])"]
    bad_specs = ["qp99", "qp52", "h264-qp52", "av1-qp0", "av1-qp64", "av1-qp40-422",
                 "qp[45:30]", "qp[30:60]", "h264-qp[0:52]", "av1-qp[0:63]", "qp40-[420:444]"]


def _sequence(n: int = 8, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """A camera panning over one smooth scene: frame t is the scene shifted t pixels to the left."""
    scene = random_images(1, height, width + 2 * n, seed=11)[0].permute(1, 2, 0).numpy()
    return [np.ascontiguousarray(scene[:, 2 * t : 2 * t + width]) for t in range(n)]


def _psnr(clean, degraded) -> float:
    mse = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(clean, degraded)])
    return float(10 * np.log10(255**2 / mse))


def test_x264_qp_is_constant_per_frame():
    """The H.264 decoder exports each macroblock's QP: P-frames sit at N, I-frames at N-3 (ipratio 1.4), no AQ."""
    stream = encode_stream(_sequence(), "h264", 40, inspect=True)
    assert stream.pict_types[0] == "I" and "P" in stream.pict_types
    assert len(stream.frame_qp) == len(stream.pict_types) == 8
    for kind, qp in zip(stream.pict_types, stream.frame_qp):
        assert qp == (37.0 if kind == "I" else 40.0), (kind, qp)
    veryfast = ("subme=2", "ref=1", "trellis=0", "me=hex")  # what x264's preset veryfast sets
    for setting in ("rc=cqp", "qp=40", "ip_ratio=1.40", "aq=0", "bframes=0", "keyint=60", "threads=1", *veryfast):
        assert setting in stream.encoder_settings.split(), setting


def test_x265_qp_is_constant_per_frame(tmp_path):
    """x265's own per-frame log (its csv option) gives the QP of every frame; its SEI gives the settings."""
    log = tmp_path / "x265.csv"
    stream = encode_stream(_sequence(), "hevc", 40, extra_params={"csv": str(log), "csv-log-level": "1"}, inspect=True)
    rows = list(csv.DictReader(log.open(), skipinitialspace=True))
    assert len(rows) == len(stream.frames)
    for row in rows:
        assert float(row["QP"]) == (37.0 if row["Type"].strip() == "I-SLICE" else 40.0), row
    assert {r["Type"].strip() for r in rows} == {"I-SLICE", "P-SLICE"}
    veryfast = ("rc-lookahead=15", "ref=2", "subme=1", "rd=2")  # what x265's preset veryfast sets
    for setting in ("rc=cqp", "qp=40", "ipratio=1.40", "aq-mode=0", "bframes=0", "keyint=60", "frame-threads=1", "no-cutree", *veryfast):
        assert setting in stream.encoder_settings.split(), setting


@pytest.mark.parametrize(("codec", "low", "high"), [("hevc", 30, 45), ("h264", 30, 45), ("av1", 35, 60)])
def test_higher_qp_costs_fewer_bytes_and_psnr(codec, low, high):
    frames = _sequence()
    fine, coarse = encode_stream(frames, codec, low), encode_stream(frames, codec, high)
    assert sum(coarse.nbytes) < sum(fine.nbytes)
    assert _psnr(frames, coarse.frames) < _psnr(frames, fine.frames)


@pytest.mark.parametrize("spec", ["qp30", "h264-qp30", "av1-qp40"])
def test_frames_stay_aligned_with_input(spec):
    """Distinct images in, each output is nearest to its own input, in the same order."""
    images = random_images(5, 32, 48, seed=7)
    out = parse_degradation(spec)(images).images
    for i, o in enumerate(out):
        errors = [(o.float() - c.float()).pow(2).mean().item() for c in images]
        assert int(np.argmin(errors)) == i


@pytest.mark.parametrize(("spec", "size"), [("qp30-420", (33, 47)), ("h264-qp30-420", (33, 47)), ("av1-qp40", (33, 47)), ("qp30", (6, 9))])
def test_odd_and_tiny_sizes_are_padded_then_cropped_back(spec, size):
    images = random_images(2, *size, seed=3)
    out = parse_degradation(spec)(images)
    assert [tuple(o.shape) for o in out.images] == [(3, *size)] * 2
    assert _psnr([i.numpy() for i in images], [o.numpy() for o in out.images]) > 20


def test_single_image_is_an_intra_only_stream():
    frames = _sequence(4)
    for codec in ("hevc", "h264", "av1"):
        alone = [encode_stream([f], codec, 40, inspect=True) for f in frames]
        assert all(s.pict_types == ["I"] for s in alone)
        together = encode_stream(frames, codec, 40)
        assert sum(together.nbytes) < sum(s.nbytes[0] for s in alone), codec  # temporal prediction pays off


def test_settings_banner_is_not_counted_as_bandwidth():
    stream = encode_stream(_sequence(3), "hevc", 40, inspect=True)
    banner = len(stream.encoder_settings)
    assert banner > 500 and len(stream.packets[0]) - stream.nbytes[0] > banner
    assert stream.nbytes[1:] == [len(p) for p in stream.packets[1:]]


def test_coded_size_drops_only_sei_nal_units():
    vps = b"\x00\x00\x00\x01" + bytes([32 << 1, 1]) + b"vps"
    sei = b"\x00\x00\x01" + bytes([39 << 1, 1]) + b"settings banner"
    idr = b"\x00\x00\x01" + bytes([19 << 1, 1]) + b"\x00\x00\x03\x01slice"
    assert coded_size(vps + sei + idr, "hevc") == len(vps) + len(idr)
    h264 = b"\x00\x00\x00\x01\x67sps" + b"\x00\x00\x00\x01\x06sei" + b"\x00\x00\x01\x65idr"
    assert coded_size(h264, "h264") == len(h264) - len(b"\x00\x00\x00\x01\x06sei")
    assert coded_size(b"\x12\x00av1", "av1") == 5


def test_frames_of_one_stream_must_share_a_size():
    with pytest.raises(DataError, match="frame 1 is 40×32"):
        parse_degradation("qp40")([random_images(1, 32, 48)[0], random_images(1, 32, 40)[0]])


@pytest.mark.parametrize(
    ("spec", "words"),
    [("qp99", "HEVC QP must be between 0 and 51"), ("h264-qp52", "H.264 QP must be between 0 and 51"),
     ("av1-qp0", "between 1 and 63"), ("av1-qp40-422", "SVT-AV1 encodes 4:2:0 only")],
)
def test_range_errors_name_token_and_range(spec, words):
    with pytest.raises(ConfigError) as info:
        parse_degradation(spec)
    assert f'"{spec}"' in str(info.value) and words in str(info.value)


def test_temporal_flag_and_chains():
    assert parse_degradation("qp40").temporal and parse_degradation("res24p+h264-qp40").temporal
    out = parse_degradation("res24p+qp40")([torch.from_numpy(f).permute(2, 0, 1) for f in _sequence(3)])
    assert [tuple(o.shape) for o in out.images] == [(3, 24, 32)] * 3 and len(out.nbytes) == 3


def test_encoder_refusal_names_codec_and_format():
    with pytest.raises(ConfigError, match="libsvtav1 refused to encode 64×48 yuv422p"):
        encode_stream(_sequence(1), "av1", 40, "422")
