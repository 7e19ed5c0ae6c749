"""loqi plugin jpeg: the ``jpegQ``, ``webpQ`` and ``avifQ`` degradations (quality Q, lower is worse).

This module only declares grammars and params; the codecs live in ``loqi_plugin_jpeg.codecs`` and are
imported by the factories, so ``loqi plugins`` never imports torch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from loqi_core.plugin import DegradationSpec, Params, hookimpl


def _quality(low: int, codec: str, example: str):
    """An int quality that must lie in [low, 100]; the error states the whole range and an example."""

    def check(value: int) -> int:
        if not low <= value <= 100:
            raise PydanticCustomError("out_of_range", f"{codec} quality must be between {low} and 100 (e.g. {example}), got {value}")
        return value

    return Annotated[int, AfterValidator(check), Field(description=f"{codec} quality, {low}-100 (lower = fewer bytes)")]


class JpegParams(Params):
    quality: _quality(1, "JPEG", "jpeg10")  # type: ignore[valid-type]


class WebpParams(Params):
    quality: _quality(0, "WebP", "webp30")  # type: ignore[valid-type]


class AvifParams(Params):
    quality: _quality(0, "AVIF", "avif30")  # type: ignore[valid-type]


def _jpeg(params: JpegParams):
    from loqi_plugin_jpeg.codecs import Jpeg

    return Jpeg(params.quality)


def _webp(params: WebpParams):
    from loqi_plugin_jpeg.codecs import PillowCodec

    return PillowCodec("WEBP", params.quality)


def _avif(params: AvifParams):
    from loqi_plugin_jpeg.codecs import PillowCodec

    return PillowCodec("AVIF", params.quality)


@hookimpl
def loqi_register_degradations(register):
    register(
        DegradationSpec(
            "jpeg",
            r"jpeg(?P<quality>\d+)",
            _jpeg,
            JpegParams,
            "JPEG round trip at quality Q (1-100): libjpeg-turbo on CPU tensors, nvJPEG on CUDA tensors",
            ("jpeg10", "jpeg50"),
        )
    )
    register(
        DegradationSpec(
            "webp",
            r"webp(?P<quality>\d+)",
            _webp,
            WebpParams,
            "lossy WebP round trip at quality Q (0-100) through Pillow's libwebp",
            ("webp30",),
        )
    )
    register(
        DegradationSpec(
            "avif",
            r"avif(?P<quality>\d+)",
            _avif,
            AvifParams,
            "AVIF round trip at quality Q (0-100) through Pillow's libavif (Pillow >= 11.3 wheels)",
            ("avif30",),
        )
    )
