"""loqi plugin video360: 360° equirectangular videos + per-frame positions → perspective-view sequences.

The paper's own dataset is of this kind: panoramic video sliced into 18 perspective views of 90° FOV,
20° apart, each view direction a video of its own, then encoded at a quantization parameter (``qpN``).
Keep this module free of torch and PyAV imports: they load inside the factories.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from loqi_core.plugin import DatasetSpec, Params, hookimpl

LAYOUT = """\
ROOT/database/<name>.mp4  + ROOT/database/<name>.csv   (columns frame,east,north; metres; frame = 0-based)
ROOT/queries/<name>.mp4   + ROOT/queries/<name>.csv
ROOT/train/<name>.mp4     [+ <name>.csv: places per view direction; without CSVs: label-free]
Frames not listed in the CSV are not used (e.g. keep only SLAM keyframes). Views are written once to
ROOT/views/<WxH>_fov.._n.._step.._start.._pitch.._every../images/{test,train}/... as lossless PNG
(@east@north@@@@@<frame>@...@.png), one folder and one sequence per (video, view direction)."""


class Video360Params(Params):
    root: Path | None = Field(None, description="dataset folder (video360:PATH, or --data-root/$LOQI_DATA + video360)")
    views: int = Field(18, ge=1, le=360, description="perspective views per frame")
    fov_deg: float = Field(90.0, gt=0, lt=180, description="horizontal field of view of each view, degrees")
    yaw_step_deg: float = Field(20.0, gt=0, description="yaw between neighbouring views, degrees")
    yaw_start_deg: float = Field(0.0, description="yaw of the first view (0 = the equirectangular image's centre)")
    pitch_deg: float = Field(0.0, ge=-89, le=89, description="pitch of every view, degrees (positive looks up)")
    size: tuple[int, int] = Field((540, 960), description="(height, width) of each view in pixels")
    frame_step: int = Field(1, ge=1, description="keep every n-th frame (of those listed in the CSV)")
    views_dir: Path | None = Field(None, description="where the sliced views go (default ROOT/views)")
    same_view_only: bool = Field(
        True, description="a database view is a positive only if it faces the query's direction (and is within the radius)"
    )
    place_radius_m: float = Field(2.0, gt=0, description="training: frames this close (same direction) form a place")


def _test(params: Video360Params):
    from loqi_plugin_video360.reader import read_test

    return read_test(params)


def _train(params: Video360Params):
    from loqi_plugin_video360.reader import read_train

    return read_train(params)


@hookimpl
def loqi_register_datasets(register):
    register(
        DatasetSpec(
            "video360",
            params=Video360Params,
            test=_test,
            train=_train,
            description="Your 360° videos + positions, sliced into perspective-view sequences (for qpN)",
            source=(
                "Your own recordings (the paper: an Insta360 camera on the 6th floor of the Lighthouse Guild, NYC, "
                "not released). Positions come from your SLAM or survey, in metres, one CSV row per kept frame."
            ),
            license="yours",
            layout=LAYOUT,
        )
    )
