import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loqi_core import load_dataset
from loqi_core.plugin import DataError
from loqi_core.testing import DatasetTests
from loqi_plugin_video360.geometry import project, remap, view_maps, view_yaws

EQ = (360, 720)  # equirectangular height, width: 2 px per degree
VIEW = (64, 96)  # (height, width) of each perspective view
SMALL = {"size": list(VIEW)}


def equirect(spots, background=40) -> np.ndarray:
    """An equirectangular frame with bright round spots at (lon, lat) degrees, radius 3 degrees."""
    h, w = EQ
    lon = (np.arange(w) + 0.5) / w * 360 - 180
    lat = 90 - (np.arange(h) + 0.5) / h * 180
    lon, lat = np.meshgrid(lon, lat)
    img = np.full((h, w, 3), background, np.uint8)
    for slon, slat in spots:
        # angular distance on the sphere, so the spot is round in every view
        c = np.sin(np.radians(lat)) * math.sin(math.radians(slat)) + np.cos(np.radians(lat)) * math.cos(
            math.radians(slat)
        ) * np.cos(np.radians(lon - slon))
        img[np.degrees(np.arccos(np.clip(c, -1, 1))) < 3] = 250
    return img


def centroid(view: np.ndarray, threshold: int = 150) -> tuple[float, float] | None:
    mask = view[..., 0].astype(float) > threshold
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    return cols.mean(), rows.mean()


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = EQ[1], EQ[0], "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(__import__("av").VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_positions(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "east", "north"])
        w.writerows(rows)
    return path


SPOTS = [(0.0, 0.0), (47.0, 10.0), (-100.0, -20.0)]


def write_dataset(root: Path) -> Path:
    """Database: one video walking north 1 m per frame; queries: the same walk, 0.5 m off, frames 0 and 2 only."""
    frames = [equirect([s]) for s in SPOTS]
    write_video(root / "database/walk.mp4", frames)
    write_positions(root / "database/walk.csv", [(i, 0.0, float(i)) for i in range(3)])
    write_video(root / "queries/again.mp4", frames)
    write_positions(root / "queries/again.csv", [(0, 0.5, 0.0), (2, 0.5, 2.0)])
    write_video(root / "train/a.mp4", frames)
    write_positions(root / "train/a.csv", [(i, 10.0, 5.0 * i) for i in range(3)])
    return root


class TestVideo360(DatasetTests):
    dataset = "video360"
    params = SMALL

    def make(self, root):
        return write_dataset(root / "v360")


def test_default_views_are_the_papers():
    assert view_yaws(18, 20.0) == [float(20 * k) for k in range(18)]
    from loqi_plugin_video360 import Video360Params

    p = Video360Params()
    assert (p.views, p.fov_deg, p.yaw_step_deg) == (18, 90.0, 20.0)


@pytest.mark.parametrize("lon, lat, yaw", [(0, 0, 0), (47, 10, 40), (47, 10, 20), (-100, -20, 260), (175, 5, 180), (-175, 5, 180)])
def test_a_direction_lands_at_the_predicted_pixel(lon, lat, yaw):
    img = equirect([(lon, lat)])
    view = remap(img, *view_maps(EQ, VIEW, 90.0, yaw))
    expected = project(lon, lat, yaw, VIEW, 90.0)
    got = centroid(view)
    assert expected is not None and got is not None
    assert abs(got[0] - expected[0]) < 0.6 and abs(got[1] - expected[1]) < 0.6


def test_a_direction_behind_the_view_is_absent():
    img = equirect([(47, 10)])
    assert centroid(remap(img, *view_maps(EQ, VIEW, 90.0, 227.0))) is None
    assert project(47, 10, 227.0, VIEW, 90.0) is None


def test_pitch_moves_the_horizon_down():
    img = equirect([(0, 0)])
    flat = centroid(remap(img, *view_maps(EQ, VIEW, 90.0, 0.0, 0.0)))
    up = centroid(remap(img, *view_maps(EQ, VIEW, 90.0, 0.0, 20.0)))
    f = (VIEW[1] / 2) / math.tan(math.radians(45))
    assert up[1] - flat[1] == pytest.approx(f * math.tan(math.radians(20)), abs=0.6)


def _yaw(path: Path) -> int:
    return int(path.parent.name[3:])


def _frame(path: Path) -> int:
    return int(path.name.split("@")[7])


def test_video_to_views_geometry_positions_and_sequences(tmp_path):
    write_dataset(tmp_path)
    test = load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    assert len(test.database) == 18 * 3 and len(test.queries) == 18 * 2
    # the known direction of each frame lands in the view facing it, at the predicted pixel (through x264)
    for path in test.database.paths:
        lon, lat = SPOTS[_frame(path)]
        expected = project(lon, lat, _yaw(path), VIEW, 90.0)
        got = centroid(np.asarray(Image.open(path)))
        if expected is None or not (3 < expected[0] < VIEW[1] - 4 and 3 < expected[1] < VIEW[0] - 4):
            continue  # off the view or cut by its border
        assert got is not None, path
        assert abs(got[0] - expected[0]) < 1.0 and abs(got[1] - expected[1]) < 1.0, path
    facing = [p for p in test.database.paths if _frame(p) == 1 and _yaw(p) == 40]
    assert centroid(np.asarray(Image.open(facing[0]))) is not None
    # positions from the CSV; the query video keeps only the frames its CSV lists
    assert sorted({_frame(p) for p in test.queries.paths}) == [0, 2]
    for p, pos in zip(test.queries.paths, test.queries.positions):
        assert pos.tolist() == [0.5, float(_frame(p))]
    # one sequence per (video, direction), in frame order
    assert len(test.database.sequences) == 18 and len(test.queries.sequences) == 18
    for run in test.database.sequences:
        assert [_frame(test.database.paths[i]) for i in run] == [0, 1, 2]
        assert len({_yaw(test.database.paths[i]) for i in run}) == 1


def test_positives_face_the_same_direction(tmp_path):
    write_dataset(tmp_path)
    test = load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    for q, pos in enumerate(test.ground_truth(1.2)):
        qp = test.queries.paths[q]
        got = sorted((_frame(test.database.paths[i]), _yaw(test.database.paths[i])) for i in pos)
        f = _frame(qp)
        assert got == [(g, _yaw(qp)) for g in (f - 1, f, f + 1) if 0 <= g <= 2]
    loose = load_dataset(f"video360:{tmp_path}", "test", params={**SMALL, "same_view_only": False})
    assert len(loose.ground_truth(0.6)[0]) == 18


def test_views_are_sliced_once_and_resliced_when_settings_change(tmp_path):
    write_dataset(tmp_path)
    first = load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    stamp = first.database.paths[0].stat().st_mtime_ns
    again = load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    assert again.database.paths[0].stat().st_mtime_ns == stamp
    fewer = load_dataset(f"video360:{tmp_path}", "test", params={**SMALL, "views": 4, "yaw_step_deg": 90})
    assert len(fewer.database) == 12 and {_yaw(p) for p in fewer.database.paths} == {0, 90, 180, 270}


def test_training_places_per_direction(tmp_path):
    write_dataset(tmp_path)
    train = load_dataset(f"video360:{tmp_path}", "train", params=SMALL)
    assert len(train.images) == 54
    places = train.places()
    assert len(places) == 54  # frames 5 m apart, radius 2 m: one place per (frame, direction)
    wide = load_dataset(f"video360:{tmp_path}", "train", params={**SMALL, "place_radius_m": 6.0})
    for idx in wide.places().values():
        assert len({_yaw(wide.images.paths[i]) for i in idx}) == 1


def test_training_without_positions_is_label_free(tmp_path):
    write_video(tmp_path / "train/x.mp4", [equirect([(0, 0)])] * 2)
    train = load_dataset(f"video360:{tmp_path}", "train", params={**SMALL, "views": 2})
    assert len(train.images) == 4 and train.place_ids is None


def test_bad_inputs_are_named(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "queries/again.csv").unlink()
    with pytest.raises(DataError, match="again.csv"):
        load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    write_positions(tmp_path / "queries/again.csv", [(0, "x", 1)])
    with pytest.raises(DataError, match="again.csv, line 2"):
        load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    broken = tmp_path / "queries/again.mp4"
    broken.write_bytes(broken.read_bytes()[:200])
    write_positions(tmp_path / "queries/again.csv", [(0, 0, 0)])
    with pytest.raises(DataError, match="again.mp4"):
        load_dataset(f"video360:{tmp_path}", "test", params=SMALL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"video360:{tmp_path / 'empty'}", "test", params=SMALL)
