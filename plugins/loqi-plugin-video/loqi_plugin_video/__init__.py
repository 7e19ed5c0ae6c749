"""loqi plugin video: ``qpN`` / ``hevc-qpN`` (x265), ``h264-qpN`` (x264) and ``av1-qpN`` (SVT-AV1).

Frames are encoded as a video at a constant quantization parameter and decoded back, in memory, with PyAV.
The images of one call form one stream in the order given (a sequence); a one-image call is a one-frame,
intra-only stream. An optional ``-420`` / ``-422`` / ``-444`` suffix picks the chroma format.
This module only declares grammars and params; PyAV is imported by the factories.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from loqi_core.plugin import DegradationSpec, Params, hookimpl

CHROMA = r"(?:-(?P<chroma>420|422|444))?"


def _qp(low: int, high: int, codec: str, example: str):
    """A QP in [low, high] whose error states the codec's whole range and an example."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise PydanticCustomError("out_of_range", f"{codec} QP must be between {low} and {high} (e.g. {example}), got {value}")
        return value

    return Annotated[int, AfterValidator(check), Field(description=f"{codec} quantization parameter, {low}-{high}")]


class HevcParams(Params):
    qp: _qp(0, 51, "HEVC", "qp40")  # type: ignore[valid-type]
    chroma: Literal["420", "422", "444"] = Field("422", description="chroma format; 4:2:2 as the authors' -pix_fmt yuv422p")


class H264Params(Params):
    qp: _qp(0, 51, "H.264", "h264-qp40")  # type: ignore[valid-type]
    chroma: Literal["420", "422", "444"] = Field("422", description="chroma format; 4:2:2 like the qpN default")


class Av1Params(Params):
    qp: _qp(1, 63, "AV1 (SVT-AV1)", "av1-qp50")  # type: ignore[valid-type]
    chroma: Literal["420", "422", "444"] = Field("420", description="SVT-AV1 encodes 4:2:0 only")

    @field_validator("chroma")
    @classmethod
    def _only_420(cls, value: str) -> str:
        if value != "420":
            raise PydanticCustomError("unsupported", f"SVT-AV1 encodes 4:2:0 only; drop the -{value} suffix")
        return value


def _factory(codec: str):
    def build(params: Params):
        from loqi_plugin_video.codec import VideoQP

        return VideoQP(codec, params.qp, params.chroma)  # type: ignore[attr-defined]

    return build


@hookimpl
def loqi_register_degradations(register):
    register(
        DegradationSpec(
            "hevc",
            r"(?:hevc-)?qp(?P<qp>\d+)" + CHROMA,
            _factory("hevc"),
            HevcParams,
            "HEVC/x265 at constant QP 0-51 (the authors' pipeline: no B-frames, GOP 60, preset veryfast, 4:2:2)",
            ("qp40", "hevc-qp40", "qp40-420"),
        )
    )
    register(
        DegradationSpec(
            "h264",
            r"h264-qp(?P<qp>\d+)" + CHROMA,
            _factory("h264"),
            H264Params,
            "H.264/x264 at constant QP 0-51 (no B-frames, GOP 60, preset veryfast, 4:2:2)",
            ("h264-qp40",),
        )
    )
    register(
        DegradationSpec(
            "av1",
            r"av1-qp(?P<qp>\d+)" + CHROMA,
            _factory("av1"),
            Av1Params,
            "AV1/SVT-AV1 at constant QP 1-63 on AV1's own scale (low delay, GOP 60, preset 10, 4:2:0)",
            ("av1-qp50",),
        )
    )
