"""Slicing 360° videos into perspective views on disk, then reading them back as loqi datasets.

Views are written once into ``<views_dir>/<setting key>/images/<split>/<role>/<video>/yaw<ddd>/`` with
gmberton-style names ``@east@north@@@@@<frame>@@@@@@@@.png`` (lossless PNG, so the degradation under test is
the only loss), then read by loqi's folder reader: one sequence per (video, view direction), in frame order.
A ``.done`` marker per video records the settings and the video's size and mtime, so a finished video is not
sliced again and an interrupted one is redone.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from loqi_core.plugin import DataError, ImageList, TestSet, TrainSet, group_places, read_image_list, read_test_folder

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


def setting_key(params) -> str:
    """Folder name of one slicing setting: size, FOV, views, yaw step and start, pitch, frame step."""
    h, w = params.size
    return (
        f"{w}x{h}_fov{params.fov_deg:g}_n{params.views}_step{params.yaw_step_deg:g}_start{params.yaw_start_deg:g}"
        f"_pitch{params.pitch_deg:g}_every{params.frame_step}"
    )


def read_positions(table: Path) -> dict[int, tuple[float, float]]:
    """``frame,east,north`` rows (metres; frame = 0-based index of the decoded frame) → {frame: (east, north)}."""
    out: dict[int, tuple[float, float]] = {}
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("frame", "east", "north") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)} (expected frame,east,north)")
        for line, row in enumerate(reader, start=2):
            try:
                frame, east, north = int(row["frame"]), float(row["east"]), float(row["north"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{table}, line {line}: {exc}") from None
            if frame < 0 or not (np.isfinite(east) and np.isfinite(north)):
                raise DataError(f"{table}, line {line}: frame must be >= 0 and east/north finite")
            if frame in out:
                raise DataError(f"{table}, line {line}: frame {frame} listed twice")
            out[frame] = (east, north)
    if not out:
        raise DataError(f"{table}: no positions")
    return out


def list_videos(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {folder}")
    return videos


def _frame_name(frame: int, position: tuple[float, float] | None) -> str:
    if position is None:
        return f"frame_{frame:07d}.png"
    return f"@{position[0]:.3f}@{position[1]:.3f}@@@@@{frame}@@@@@@@@.png"


def slice_video(video: Path, out_dir: Path, params, positions: dict[int, tuple[float, float]] | None, notes: list[str]) -> None:
    """Decode ``video`` and write every kept frame's views under ``out_dir/yaw<ddd>/``.

    Kept frames: those in ``positions`` (all frames when None), then every ``frame_step``-th of them.
    """
    import av
    from PIL import Image

    from loqi_plugin_video360.geometry import remap, view_maps, view_yaws

    stat = video.stat()
    stamp = {"key": setting_key(params), "bytes": stat.st_size, "mtime": stat.st_mtime_ns, "positions": positions is not None}
    marker = out_dir / ".done"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return
    wanted = sorted(positions) if positions is not None else None
    if wanted is not None:
        wanted = set(wanted[:: params.frame_step])
    yaws = view_yaws(params.views, params.yaw_step_deg, params.yaw_start_deg)
    dirs = [out_dir / f"yaw{round(y):03d}" for y in yaws]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.png"):  # an interrupted earlier run
            old.unlink()
    maps: list[tuple[np.ndarray, np.ndarray]] | None = None
    written = 0
    try:
        container = av.open(str(video))
    except (av.error.FFmpegError, OSError) as exc:
        raise DataError(f"{video}: cannot open the video ({exc})") from None
    from loqi_core.plugin import progress

    try:
        with container:
            stream = container.streams.video[0]
            bar = progress(total=stream.frames or None, desc=f"slicing {video.name}", unit="frame", leave=False, mininterval=1.0)
            for index, frame in enumerate(container.decode(stream)):
                bar.update()
                keep = (index in wanted) if wanted is not None else index % params.frame_step == 0
                if not keep:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                if maps is None:
                    maps = [view_maps(rgb.shape[:2], tuple(params.size), params.fov_deg, y, params.pitch_deg) for y in yaws]
                name = _frame_name(index, positions[index] if positions is not None else None)
                for d, (mx, my) in zip(dirs, maps):
                    Image.fromarray(remap(rgb, mx, my)).save(d / name)
                written += 1
            bar.close()
    except av.error.FFmpegError as exc:
        raise DataError(f"{video}: cannot decode the video ({exc}); it may be truncated or corrupt") from None
    except IndexError:
        raise DataError(f"{video}: no video stream") from None
    if written == 0:
        raise DataError(f"{video}: no frame was kept (positions CSV frames beyond the video? frame_step too large?)")
    if wanted is not None and written < len(wanted):
        notes.append(f"{video.name}: {len(wanted) - written} frame(s) listed in its CSV are beyond the end of the video")
    marker.write_text(json.dumps(stamp))


def _positions_for(video: Path, required: bool) -> dict[int, tuple[float, float]] | None:
    table = video.with_suffix(".csv")
    if table.is_file():
        return read_positions(table)
    if required:
        raise DataError(f"{video}: no positions file {table.name} next to it (columns frame,east,north)")
    return None


def views_base(params) -> Path:
    root = Path(params.root)
    return Path(params.views_dir or root / "views") / setting_key(params)


def slice_folder(params, folder: Path, out: Path, required: bool, notes: list[str]) -> None:
    """Slice every video of ``folder`` into ``out/<video stem>/``; views of videos no longer there are removed."""
    videos = list_videos(folder)
    if out.is_dir():
        for stale in out.iterdir():
            if stale.is_dir() and stale.name not in {v.stem for v in videos}:
                shutil.rmtree(stale)
    for video in videos:
        slice_video(video, out / video.stem, params, _positions_for(video, required), notes)


def _root(params) -> Path:
    if params.root is None:
        raise DataError("video360 needs its folder: --dataset video360:PATH (or --data-root / $LOQI_DATA)")
    root = Path(params.root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    return root


def _direction(path: Path) -> int:
    return int(path.parent.name.removeprefix("yaw"))


def read_test(params) -> TestSet:
    """``ROOT/database/*.mp4`` and ``ROOT/queries/*.mp4`` (each with a ``.csv`` of positions) → a TestSet."""
    root = _root(params)
    base = views_base(params)
    notes: list[str] = []
    for role in ("database", "queries"):
        slice_folder(params, root / role, base / "images/test" / role, True, notes)
    test = read_test_folder(base, name="video360", validate="none", order="frame")
    if params.same_view_only:
        test.database_groups = np.array([_direction(p) for p in test.database.paths])
        test.query_groups = np.array([_direction(p) for p in test.queries.paths])
    test.notes.extend(notes)
    test.expected_counts = {}
    return test


def read_train(params) -> TrainSet:
    """``ROOT/train/*.mp4`` (or ROOT's own videos): views grouped into places per direction when positioned."""
    root = _root(params)
    folder = root / "train" if (root / "train").is_dir() else root
    base = views_base(params) / "images/train"
    notes: list[str] = []
    slice_folder(params, folder, base, False, notes)
    has = {v.stem: v.with_suffix(".csv").is_file() for v in list_videos(folder)}
    if any(has.values()) and not all(has.values()):
        missing = sorted(k for k, v in has.items() if not v)
        raise DataError(f"{folder}: some videos have a positions CSV and {', '.join(missing)} do(es) not; give all or none")
    positioned = all(has.values())
    images: ImageList = read_image_list(base, positions=positioned, validate="none", order="frame" if positioned else "name")
    place_ids = None
    if positioned:
        directions = np.array([_direction(p) for p in images.paths])
        place_ids = np.full(len(images), -1, dtype=np.int64)
        offset = 0
        for d in np.unique(directions):  # a place = nearby frames seen in the same direction
            idx = np.flatnonzero(directions == d)
            ids = group_places(images.positions[idx], params.place_radius_m)
            place_ids[idx] = ids + offset
            offset += int(ids.max()) + 1
    train = TrainSet("video360", images, place_ids)
    train.notes.extend(notes)
    return train
