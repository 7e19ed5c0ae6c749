"""loqi plugin resolution: ``resNp`` (height N, aspect kept), ``scaleF`` and ``WxH`` downscaling.

Optional suffixes, in this order: ``-area`` / ``-bilinear`` / ``-bicubic`` picks the interpolation (default
bilinear, as the authors' ``cv2.resize``), ``-back`` resizes the result back to the original size, and ``-qN``
stores the result as a JPEG of quality N and reads it back (``-q95``: what the authors' ``cv2.imwrite`` does;
``--protocol paper`` adds it to a resolution stage that ends the chain).
Without ``-back`` the small image is handed on as it is: to the next stage of a chain (``res270p+qp40``
encodes the 270p frames) and then to the model's own preprocessing, which resizes it to the model's input.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from loqi_core.plugin import DegradationSpec, Params, hookimpl

MAX_SIDE = 16384
SUFFIXES = r"(?:-(?P<interpolation>area|bilinear|bicubic))?(?:-(?P<back>back))?(?:-q(?P<file_quality>\d+))?"
PROTOCOLS = {"paper": "-q95"}  # the authors write each resized image with cv2.imwrite: JPEG, quality 95 by default


def _bounded(low: int, high: int, what: str, example: str):
    """A pixel count in [low, high] whose error states the whole range and an example."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise PydanticCustomError("out_of_range", f"must be between {low} and {high} pixels (e.g. {example}), got {value}")
        return value

    return Annotated[int, AfterValidator(check), Field(description=f"{what}, {low}-{high}")]


def _scale_factor(value: float) -> float:
    if not 0 < value <= 1:
        raise PydanticCustomError("out_of_range", f"must be in (0, 1] (e.g. scale0.25), got {value:g}")
    return value


class ResizeParams(Params):
    """What every resolution spec shares: the interpolation and whether to resize back."""

    interpolation: Literal["area", "bilinear", "bicubic"] = Field(
        "bilinear",
        description="bilinear: no antialiasing, like cv2.resize INTER_LINEAR (the authors' resolution experiments); "
        "bicubic: antialiased, like ffmpeg's bicubic scaler (the authors' video pipeline); area: box average",
    )
    back: bool = Field(False, description="resize the result back to the original size (suffix -back)")
    file_quality: int | None = Field(
        None, ge=1, le=100,
        description="store the result as a JPEG of this quality and read it back (suffix -qN; cv2.imwrite's default: 95)",
    )

    @field_validator("back", mode="before")
    @classmethod
    def _suffix(cls, value: object) -> object:
        return True if value == "back" else value


class HeightParams(ResizeParams):
    height: _bounded(1, MAX_SIDE, "height", "res360p")  # type: ignore[valid-type]


class ScaleParams(ResizeParams):
    factor: Annotated[float, AfterValidator(_scale_factor), Field(description="scale factor, 0 < F <= 1")]


class SizeParams(ResizeParams):
    width: _bounded(1, MAX_SIDE, "width", "480x270")  # type: ignore[valid-type]
    height: _bounded(1, MAX_SIDE, "height", "480x270")  # type: ignore[valid-type]


def _by_height(params: HeightParams):
    from loqi_plugin_resolution.resize import Resize, size_for_height

    return Resize(lambda h, w: size_for_height(h, w, params.height), params.interpolation, params.back, params.file_quality)


def _by_scale(params: ScaleParams):
    from loqi_plugin_resolution.resize import Resize, size_for_scale

    return Resize(lambda h, w: size_for_scale(h, w, params.factor), params.interpolation, params.back, params.file_quality)


def _by_size(params: SizeParams):
    from loqi_plugin_resolution.resize import Resize

    return Resize(lambda h, w: (params.height, params.width), params.interpolation, params.back, params.file_quality)


@hookimpl
def loqi_register_degradations(register):
    register(
        DegradationSpec(
            "res",
            r"res(?P<height>\d+)p" + SUFFIXES,
            _by_height,
            HeightParams,
            "resize to height N, aspect kept; -area|-bilinear|-bicubic, -back to resize back, -qN via a JPEG-N file",
            ("res360p", "res270p-bicubic", "res180p-back", "res360p-q95"),
            PROTOCOLS,
        )
    )
    register(
        DegradationSpec(
            "scale",
            r"scale(?P<factor>\d+(?:\.\d+)?)" + SUFFIXES,
            _by_scale,
            ScaleParams,
            "scale both sides by F (0 < F <= 1); same suffixes as resNp",
            ("scale0.25", "scale0.5-area"),
            PROTOCOLS,
        )
    )
    register(
        DegradationSpec(
            "size",
            r"(?P<width>\d+)x(?P<height>\d+)" + SUFFIXES,
            _by_size,
            SizeParams,
            "resize to exactly W×H (aspect not kept); same suffixes as resNp",
            ("480x270", "240x180-bicubic"),
            PROTOCOLS,
        )
    )
