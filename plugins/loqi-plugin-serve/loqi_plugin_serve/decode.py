"""Request bodies → uint8 RGB tensors: images with Pillow, H.264/HEVC segments with PyAV, all in memory.

Everything a client can get wrong becomes a ``BadInput`` (an HTTP 4xx status, a short code, one clear line):
the server never answers bad bytes with a 5xx. Sizes are checked from the headers before any pixel is decoded,
so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
VIDEO_TYPES = {"video/h264": "h264", "video/h265": "hevc", "video/hevc": "hevc", "video/mp4": "mp4",
               "video/mp2t": "mpegts", "video/x-matroska": "matroska", "video/webm": "matroska"}  # fmt: skip
"""Content type → FFmpeg demuxer. Only these demuxers are ever opened (never probed: some read other files)."""
ANY = "application/octet-stream"
VIDEO_CODECS = ("h264", "hevc")


class BadInput(Exception):
    """A request the server refuses: ``status`` (4xx), a short ``code`` for metrics, and the reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def media_type(header: str | None) -> str:
    """``"image/jpeg; charset=x"`` → ``"image/jpeg"``; a missing header is ``""``."""
    return (header or "").split(";")[0].strip().lower()


def check_content_type(header: str | None, accepted: dict[str, str]) -> str:
    """The request's media type when it is one of ``accepted`` or application/octet-stream, else a 415."""
    kind = media_type(header)
    if kind in accepted or kind == ANY:
        return kind
    raise BadInput(415, "content_type", f'Content-Type "{kind or "(none)"}" is not accepted here; send the raw bytes '
                   f"as one of {', '.join(accepted)} or {ANY}")  # fmt: skip


def _pixels_check(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise BadInput(413, "too_many_pixels", f"{what} is {width}×{height} = {width * height} pixels, more than the "
                       f"limit of {max_pixels} (a decompression bomb, or too large: downscale it)")  # fmt: skip


def decode_image(data: bytes, max_pixels: int) -> "torch.Tensor":
    """JPEG, PNG or WebP bytes → uint8 RGB 3×H×W (EXIF orientation applied; the first frame of an animation)."""
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadInput(400, "empty_body", "the request body is empty: send the image bytes")
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_TYPES.values())) as img:
            _pixels_check(img.width, img.height, max_pixels, f"the {img.format} image")
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except UnidentifiedImageError:
        raise BadInput(400, "not_an_image", f"the body ({len(data)} bytes, starting {data[:8].hex()}) is not a JPEG, "
                       "PNG or WebP image") from None  # fmt: skip
    except Image.DecompressionBombError as exc:
        raise BadInput(413, "too_many_pixels", f"decompression bomb refused: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(400, "corrupt_image", f"the image cannot be decoded: {exc} (truncated or corrupt?)") from None
    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def sniff_container(data: bytes) -> str | None:
    """The demuxer for a segment sent as application/octet-stream, from its first bytes; None if unknown."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:
        return "mpegts"
    start = 4 if data[:4] == b"\x00\x00\x00\x01" else 3 if data[:3] == b"\x00\x00\x01" else 0
    if start:
        header = data[start] if start < len(data) else 0
        # an Annex B stream starts with an access unit delimiter or parameter sets: H.264 types 9/7, HEVC 35/32/33
        return "hevc" if (header >> 1) & 0x3F in (32, 33, 34, 35) and header & 0x81 == 0 else "h264"
    return None


def decode_video(data: bytes, kind: str, max_pixels: int, max_frames: int, max_total_pixels: int) -> list["torch.Tensor"]:
    """An H.264 or HEVC segment (raw Annex B, MP4, MPEG-TS or Matroska) → its frames, uint8 RGB, in display order.

    ``max_total_pixels`` bounds the memory of the decoded segment: a few bytes of a static scene can decode to
    many large frames (a video decompression bomb).
    """
    import av
    import torch

    if not data:
        raise BadInput(400, "empty_body", "the request body is empty: send the video segment's bytes")
    demuxer = VIDEO_TYPES.get(kind) or sniff_container(data)
    if demuxer is None:
        raise BadInput(400, "not_a_video", f"the body ({len(data)} bytes, starting {data[:8].hex()}) is not a raw "
                       "H.264/HEVC stream, MP4, MPEG-TS or Matroska segment; say which with Content-Type")  # fmt: skip
    frames, total = [], 0
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            if not container.streams.video:
                raise BadInput(400, "not_a_video", f"the {demuxer} segment has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if codec not in VIDEO_CODECS:
                raise BadInput(415, "video_codec", f'video codec "{codec}" is not served; send H.264 or HEVC')
            if stream.codec_context.width and stream.codec_context.height:
                _pixels_check(stream.codec_context.width, stream.codec_context.height, max_pixels, "each frame")
            stream.thread_count = 1
            for frame in container.decode(stream):
                _pixels_check(frame.width, frame.height, max_pixels, f"frame {len(frames)}")
                if len(frames) == max_frames:
                    raise BadInput(413, "too_many_frames", f"the segment has more than {max_frames} frames (the limit "
                                   "per request): send shorter segments")  # fmt: skip
                total += frame.width * frame.height
                if total > max_total_pixels:
                    raise BadInput(413, "too_many_pixels", f"the segment decodes to more than {max_total_pixels} pixels "
                                   f"in all (the limit per request; {len(frames) + 1} frames so far): send shorter or "
                                   "smaller segments")  # fmt: skip
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).contiguous())
    except av.error.FFmpegError as exc:
        raise BadInput(400, "corrupt_video", f"the {demuxer} segment cannot be decoded: {exc}") from None
    if not frames:
        raise BadInput(400, "corrupt_video", f"no frame could be decoded from the {demuxer} segment ({len(data)} bytes)")
    return frames
