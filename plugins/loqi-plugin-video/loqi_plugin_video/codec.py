"""Encode RGB frames as one video stream at a constant QP and decode them back, in memory, with PyAV.

Settings follow the authors' ffmpeg command (``-vcodec libx265 -x265-params qp=N -pix_fmt yuv422p -bf 0 -g 60
-preset veryfast``): x265/x264 in constant-QP mode (``rc=cqp``, adaptive quantisation off), no B-frames,
a keyframe at least every 60 frames (scene cuts may add one), preset veryfast. As in any x264/x265 ``qp=N``
encode, I-frames get N − 3 (the encoders' ``ipratio`` 1.4) and P-frames exactly N. SVT-AV1 runs in CQP
with low-delay prediction (no reordering) and fixed qindex offsets of 0, so every frame uses the same qindex.
Every encoder runs on one thread, which makes the bitstream independent of the machine's core count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import av
import numpy as np
import torch
from av.video.frame import PictureType

from loqi_core.plugin import ConfigError, DataError, Degradation, Degraded

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder unless told to report errors only

GOP = 60
"""Frames between forced keyframes (the authors' ``-g 60``)."""
FPS = 25
"""Nominal frame rate written into the stream; constant-QP encoding does not depend on it."""
MIN_SIDE = 16
"""x265 refuses frames under 16 pixels a side (SVT-AV1 under 4): smaller frames are padded to 16, then cropped back."""
PIX_FMT = {"420": "yuv420p", "422": "yuv422p", "444": "yuv444p"}


@dataclass(frozen=True)
class CodecInfo:
    """One codec: the PyAV encoder and decoder, where its own parameters go, and its fixed settings."""

    encoder: str
    decoder: str
    params_option: str
    options: dict[str, str]
    """avcodec options besides the codec's own parameter string."""
    params: dict[str, str]
    """Fixed entries of the codec's parameter string (``x265-params`` ...); ``qp`` is added per spec."""
    default_chroma: str = "422"
    """The authors' ``-pix_fmt yuv422p`` for x264/x265; 4:2:0 for SVT-AV1, the only format it encodes."""
    qp_in_params: bool = True
    sei_nal_types: tuple[int, ...] = ()
    """NAL unit types of SEI messages, left out of the byte count (the encoder's settings banner)."""


CODECS: dict[str, CodecInfo] = {
    "hevc": CodecInfo(
        "libx265", "hevc", "x265-params", {"preset": "veryfast"},
        {"bframes": "0", "keyint": str(GOP), "log-level": "error"}, sei_nal_types=(39, 40),
    ),
    "h264": CodecInfo(
        "libx264", "h264", "x264-params", {"preset": "veryfast"},
        {"bframes": "0", "keyint": str(GOP)}, sei_nal_types=(6,),
    ),
    "av1": CodecInfo(
        "libsvtav1", "libdav1d", "svtav1-params", {"preset": "10"},
        {"pred-struct": "1", "lp": "1", "use-fixed-qindex-offsets": "1"}, default_chroma="420", qp_in_params=False,
    ),
}


@dataclass
class Stream:
    """A decoded stream: frames aligned with the input, per-frame bytes, and what the bitstream says."""

    frames: list[np.ndarray]
    """Decoded RGB frames H×W×3 uint8, cropped to the input size, in input order."""
    nbytes: list[int]
    """Bytes of each frame's coded data (headers included, SEI messages left out)."""
    packets: list[bytes]
    """The raw bitstream, one entry per frame in input order."""
    pict_types: list[str] = field(default_factory=list)
    """Picture type per frame ("I", "P") when inspected."""
    frame_qp: list[float] = field(default_factory=list)
    """Mean QP per frame when the decoder exports it (H.264) and the stream was inspected."""
    encoder_settings: str = ""
    """The settings string x264/x265 write into the stream (an unregistered-user-data SEI) when inspected."""


def padded_size(height: int, width: int, chroma: str) -> tuple[int, int]:
    """The frame size handed to the encoder: at least ``MIN_SIDE``, even where the chroma format halves a side."""
    h, w = max(MIN_SIDE, height), max(MIN_SIDE, width)
    if chroma in ("420", "422"):
        w += w % 2
    if chroma == "420":
        h += h % 2
    return h, w


def coded_size(data: bytes, codec: str) -> int:
    """Bytes of one packet without its SEI NAL units (Annex B), for H.264 and HEVC; AV1 packets count whole."""
    sei = CODECS[codec].sei_nal_types
    if not sei:
        return len(data)
    starts, pos = [], data.find(b"\x00\x00\x01")
    while pos >= 0:
        starts.append(pos)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    begins = [s - 1 if s > 0 and data[s - 1] == 0 else s for s in starts] + [len(data)]
    dropped = 0
    for k, s in enumerate(starts):
        header = data[s + 3] if s + 3 < len(data) else 0
        nal_type = header & 0x1F if codec == "h264" else (header >> 1) & 0x3F
        if nal_type in sei:
            dropped += begins[k + 1] - begins[k]
    return len(data) - dropped


def _encoder(codec: str, qp: int, chroma: str, height: int, width: int, extra: dict[str, str] | None):
    info = CODECS[codec]
    ctx = av.CodecContext.create(info.encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, PIX_FMT[chroma]
    ctx.time_base = Fraction(1, FPS)
    ctx.framerate = Fraction(FPS)
    ctx.gop_size = GOP
    ctx.max_b_frames = 0
    ctx.thread_count = 1
    params = dict(info.params)
    options = dict(info.options)
    if info.qp_in_params:
        params["qp"] = str(qp)
    else:
        options["qp"] = str(qp)
    params.update(extra or {})
    options[info.params_option] = ":".join(f"{k}={v}" for k, v in params.items())
    ctx.options = options
    return ctx


def encode_stream(
    frames: Sequence[np.ndarray],
    codec: str,
    qp: int,
    chroma: str | None = None,
    *,
    extra_params: dict[str, str] | None = None,
    inspect: bool = False,
) -> Stream:
    """Encode H×W×3 uint8 RGB frames as one stream in the given order, decode it, and return it aligned.

    ``extra_params`` are appended to the codec's parameter string (e.g. x265's ``csv`` per-frame log);
    ``inspect`` also collects picture types, per-frame QP where the decoder exports it, and the encoder's
    settings string. ``chroma`` ("420", "422", "444") defaults to the codec's ``default_chroma``.
    Colour conversion is swscale's default BT.601 limited range, both ways.
    """
    if codec not in CODECS:
        raise ConfigError(f'unknown video codec "{codec}"; known: {", ".join(CODECS)}')
    chroma = chroma or CODECS[codec].default_chroma
    n = len(frames)
    height, width = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape != (height, width, 3) or f.dtype != np.uint8:
            raise DataError(
                f"{codec}-qp{qp}: the frames of one stream must share one size; frame 0 is {width}×{height}, "
                f"frame {i} is {f.shape[1]}×{f.shape[0]} ({f.dtype})"
            )
    ph, pw = padded_size(height, width, chroma)
    enc = _encoder(codec, qp, chroma, ph, pw, extra_params)
    packets = []
    try:
        for i, f in enumerate(frames):
            if (ph, pw) != (height, width):
                f = np.pad(f, ((0, ph - height), (0, pw - width), (0, 0)), mode="edge")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24").reformat(format=PIX_FMT[chroma])
            frame.pts = i
            packets.extend(enc.encode(frame))
        packets.extend(enc.encode(None))
    except av.error.FFmpegError as exc:
        raise ConfigError(
            f"{codec}-qp{qp}: {CODECS[codec].encoder} refused to encode {pw}×{ph} {PIX_FMT[chroma]} frames: {exc}"
        ) from None
    if len(packets) != n:
        raise DataError(f"{codec}-qp{qp}: the encoder returned {len(packets)} packets for {n} frames")
    packets.sort(key=lambda p: p.pts)

    dec = av.CodecContext.create(CODECS[codec].decoder, "r")
    dec.thread_count = 1
    if inspect:
        dec.options = {"export_side_data": "venc_params"}
    decoded = []
    for p in packets:
        decoded.extend(dec.decode(p))
    decoded.extend(dec.decode(None))
    if len(decoded) != n:
        raise DataError(f"{codec}-qp{qp}: decoding gave {len(decoded)} frames for {n}")
    decoded.sort(key=lambda fr: fr.pts)

    raw = [bytes(p) for p in packets]
    stream = Stream(
        frames=[np.ascontiguousarray(fr.to_ndarray(format="rgb24")[:height, :width]) for fr in decoded],
        nbytes=[coded_size(b, codec) for b in raw],
        packets=raw,
    )
    if inspect:
        for fr in decoded:
            stream.pict_types.append(PictureType(int(fr.pict_type)).name)
            for side in list(fr.side_data):
                if side.type.name == "VIDEO_ENC_PARAMS":
                    stream.frame_qp.append(float(np.mean(side.qp_map())))
                elif side.type.name == "SEI_UNREGISTERED" and not stream.encoder_settings:
                    stream.encoder_settings = bytes(side)[16:].decode("utf-8", "replace").rstrip("\x00")
    return stream


class VideoQP(Degradation):
    """The images of one call as one video stream at constant QP (a one-image call is an intra-only stream)."""

    temporal = True

    def __init__(self, codec: str, qp: int, chroma: str) -> None:
        self.codec = codec
        self.qp = qp
        self.chroma = chroma

    def __call__(self, images: Sequence[torch.Tensor], *, seed: int = 0) -> Degraded:
        images = list(images)
        if not images:
            return Degraded([], [])
        for i, img in enumerate(images):
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise ConfigError(f"{self.spec}: image {i} must be a uint8 3×H×W tensor, got {img.dtype} {tuple(img.shape)}")
        stream = encode_stream([img.permute(1, 2, 0).cpu().numpy() for img in images], self.codec, self.qp, self.chroma)
        out = [torch.from_numpy(f).permute(2, 0, 1).contiguous().to(img.device) for f, img in zip(stream.frames, images)]
        return Degraded(out, stream.nbytes)
