"""Request bodies → uint8 RGB tensors: images by loqi's one decoding rule (``loqi_core.data.images``, as the index
decoded its database), H.264/HEVC segments with PyAV, all in memory.

Everything a client can get wrong becomes a ``BadInput`` (an HTTP 4xx status, a short code, one clear line):
the server never answers bad bytes with a 5xx. What an image may cost (``Bounds``) is judged from its header before
any pixel is decoded: its pixels, its aspect ratio, and its size at every step of the model's preprocessing (a
20000×1 strip would be upscaled to 128×2,560,000), so a decompression bomb or a hostile shape costs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.plugin import Preprocess

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff")
"""The formats ``loqi_core.data.images`` decodes, the database's own among them."""
VIDEO_TYPES = {"video/h264": "h264", "video/h265": "hevc", "video/hevc": "hevc", "video/mp4": "mp4",
               "video/mp2t": "mpegts", "video/x-matroska": "matroska", "video/webm": "matroska"}  # fmt: skip
"""Content type → FFmpeg demuxer. Only these demuxers are ever opened (never probed: some read other files)."""
ANY = "application/octet-stream"
MULTIPART = "multipart/form-data"
MAX_PARTS = 8
"""Parts a multipart body may have (a form with a file and a few fields; more is not a client of this API)."""
VIDEO_CODECS = ("h264", "hevc")


class BadInput(Exception):
    """A request the server refuses: ``status`` (4xx), a short ``code`` for metrics, and the reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def media_type(header: str | None) -> str:
    """``"image/jpeg; charset=x"`` → ``"image/jpeg"``; a missing header is ``""``."""
    return (header or "").split(";")[0].strip().lower()


def check_content_type(header: str | None, accepted: "tuple[str, ...] | dict[str, str]") -> str:
    """The request's media type when it is one of ``accepted``, application/octet-stream or multipart/form-data
    (a file upload), else a 415."""
    kind = media_type(header)
    if kind in accepted or kind in (ANY, MULTIPART):
        return kind
    raise BadInput(415, "content_type", f'Content-Type "{kind or "(none)"}" is not accepted here; send the raw bytes '
                   f"as one of {', '.join(accepted)} or {ANY}, or upload a file as {MULTIPART} (curl -F file=@PATH)")  # fmt: skip


@dataclass(frozen=True)
class Upload:
    """A request body as the server decodes it: the bytes, their media type, and the upload's file name if any."""

    data: bytes
    kind: str
    filename: str | None = None


def upload_of(data: bytes, header: str | None, accepted: "tuple[str, ...] | dict[str, str]") -> Upload:
    """The file in a body: the raw body itself, or the ``file`` part of a multipart/form-data body (the only part
    with a file name when none is called ``file``), with that part's media type and file name."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind = check_content_type(header, accepted)
    if kind != MULTIPART:
        return Upload(data, kind)
    boundary = parse_options_header(header or "")[1].get(b"boundary")
    if not boundary:
        raise BadInput(400, "bad_multipart", "the multipart/form-data body names no boundary in its Content-Type")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field, value = bytearray(), bytearray()

    def begin() -> None:
        if len(parts) == MAX_PARTS:
            raise BadInput(400, "bad_multipart", f"the multipart body has more than {MAX_PARTS} parts: send one file")
        parts.append(({}, bytearray()))

    def header_end() -> None:
        parts[-1][0][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": begin, "on_header_end": header_end,
        "on_header_field": lambda b, start, end: field.extend(b[start:end]),
        "on_header_value": lambda b, start, end: value.extend(b[start:end]),
        "on_part_data": lambda b, start, end: parts[-1][1].extend(b[start:end]),
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(data)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadInput(400, "bad_multipart", f"the multipart/form-data body cannot be parsed: {exc}") from None
    files = []
    for headers, body in parts:
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition == b"form-data" and (options.get(b"name") == b"file" or b"filename" in options):
            files.append((options.get(b"name") == b"file", options.get(b"filename"), headers, bytes(body)))
    chosen = [f for f in files if f[0]] or files
    if len(chosen) != 1:
        raise BadInput(400, "bad_multipart", f"the multipart body holds {len(chosen)} files: send one, as the field "
                       '"file" (curl -F file=@frame.jpg)')  # fmt: skip
    _, filename, headers, body = chosen[0]
    part_kind = media_type(headers.get(b"content-type", b"").decode("latin-1"))
    name = filename.decode("utf-8", "replace") if filename else None
    return Upload(body, part_kind if part_kind in accepted else ANY, name)


@dataclass(frozen=True)
class Bounds:
    """What one image or video frame may cost before it is decoded: its pixels, its aspect ratio (long side over
    short side), and its pixels at every step of the model's ``preprocess``."""

    max_pixels: int
    max_aspect: float
    max_model_pixels: int
    preprocess: "Preprocess"

    def check(self, width: int, height: int, what: str) -> None:
        from loqi_core.plugin import preprocess_sizes

        if width * height > self.max_pixels:
            raise BadInput(413, "too_many_pixels", f"{what} is {width}×{height} = {width * height} pixels, more than "
                           f"the limit of {self.max_pixels} (a decompression bomb, or too large: downscale it)")  # fmt: skip
        if max(width, height) > self.max_aspect * max(1, min(width, height)):
            raise BadInput(413, "aspect_ratio", f"{what} is {width}×{height}, an aspect ratio over the limit of "
                           f"{self.max_aspect:g}:1: crop it to the scene")  # fmt: skip
        sizes = [*preprocess_sizes(height, width, self.preprocess), *preprocess_sizes(width, height, self.preprocess)]
        peak_h, peak_w = max(sizes, key=lambda s: s[0] * s[1])  # either way up: a PNG's EXIF may turn it once decoded
        if peak_h * peak_w > self.max_model_pixels:
            raise BadInput(413, "too_many_pixels", f"{what} is {width}×{height}; the model's preprocessing would make it "
                           f"{peak_w}×{peak_h} = {peak_w * peak_h} pixels, more than the limit of {self.max_model_pixels}: "
                           "downscale it")  # fmt: skip


def decode_image(data: bytes, bounds: Bounds) -> "torch.Tensor":
    """The image in ``data`` as uint8 RGB 3×H×W, decoded as the index decoded its database, once ``bounds`` allow it."""
    from loqi_core.plugin import ImageTooLargeError, UnreadableImageError, decode_image as decode, probe_image

    if not data:
        raise BadInput(400, "empty_body", "the request body is empty: send the image bytes")
    name = f"the body ({len(data)} bytes, starting {data[:8].hex()})"
    try:
        header = probe_image(data, name)
    except ImageTooLargeError as exc:
        raise BadInput(413, "too_many_pixels", str(exc)) from None
    except UnreadableImageError as exc:
        raise BadInput(400, "not_an_image", str(exc)) from None
    bounds.check(header.width, header.height, f"the {header.format} image")
    try:
        return decode(data, "the body")
    except UnreadableImageError as exc:
        raise BadInput(400, "corrupt_image", str(exc)) from None


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


def decode_video(data: bytes, kind: str, bounds: Bounds, max_frames: int, max_total_pixels: int) -> list["torch.Tensor"]:
    """An H.264 or HEVC segment (raw Annex B, MP4, MPEG-TS or Matroska) → its frames, uint8 RGB, in display order.

    Each frame is held to ``bounds``; ``max_total_pixels`` bounds the memory of the decoded segment: a few bytes of a
    static scene can decode to many large frames (a video decompression bomb).
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
                bounds.check(stream.codec_context.width, stream.codec_context.height, "each frame")
            stream.thread_count = 1
            for frame in container.decode(stream):
                bounds.check(frame.width, frame.height, f"frame {len(frames)}")
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
