"""A map is a folder of images: `loqi index build --database DIR` with or without positions in the names, latitude,
longitude and UTM zone in the answers, and `loqi index add` appending a folder without encoding the index again."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from loqi_plugin_serve.geo import parse_zone, utm_to_latlon
from loqi_plugin_serve.index import add_to_index, build_index, open_index
from loqi_plugin_serve.record import IndexDirError, read_meta

# WGS 84 latitude/longitude and their UTM coordinates as PROJ computes them (pyproj 3.7, EPSG:4326 → EPSG:326zz/327zz)
PROJ = [
    (448250.577, 5411951.588, "31U", 48.85837, 2.294481),
    (334900.261, 6252290.522, "56H", -33.856784, 151.215297),
    (597979.903, 6643118.991, "32V", 59.9139, 10.7522),
    (800543.025, 55326.868, "17N", 0.5, -78.3),
    (177165.763, 9977865.452, "36M", -0.2, 30.1),
    (452765.768, 7877903.454, "35W", 71.0, 25.7),
    (440290.458, 4474257.382, "30T", 40.4168, -3.7038),
]


def _cli():
    from loqi_core.cli import cli
    from loqi_core.plugin import get_plugins

    get_plugins().add_commands(cli)
    return cli


def _images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Smooth random 32×48 PNGs under ``folder``, one per name (sub-folders allowed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        small = rng.integers(0, 256, (8, 12, 3)).astype(np.uint8)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((48, 32), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def _config(kit, tmp_path: Path, **overrides):
    return kit.index_config(tmp_path / "cache", **{"model.weights": "random", "seed": 3, **overrides})


def test_utm_to_latitude_longitude_agrees_with_proj_to_a_millimetre():
    for east, north, zone, lat, lon in PROJ:
        number, letter = parse_zone(zone)
        got_lat, got_lon = utm_to_latlon(east, north, number, letter >= "N")
        assert abs(got_lat - lat) * 111_320 < 2e-3 and abs(got_lon - lon) * 111_320 * math.cos(math.radians(lat)) < 2e-3


def test_a_folder_of_plain_images_indexes_and_serves_names_and_scores(tmp_path, kit):
    from loqi_plugin_serve.app import create_app
    from loqi_plugin_serve.engine import load_engine

    paths = _images(tmp_path / "map", [f"street/frame{i:02d}.png" for i in range(8)])
    built = CliRunner().invoke(_cli(), ["index", "build", "--method", "lite0-gem", "--weights", "random", "--seed", "3",
                                        "--database", str(tmp_path / "map"), "--out", str(tmp_path / "index"),
                                        "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "-s",
                                        "eval.num_workers=0"])  # fmt: skip
    assert built.exit_code == 0, built.output
    assert "database: 8 images of " + str((tmp_path / "map").resolve()) in built.output
    meta = read_meta(tmp_path / "index")
    assert (meta["built_from"], meta["dataset_name"], meta["database_images"]) == ("database", "map", 8)
    engine = load_engine(tmp_path / "index", device="cpu")
    assert engine.index.names == [f"street/frame{i:02d}.png" for i in range(8)]
    assert np.isnan(engine.index.utm).all() and np.isnan(engine.index.geo).all()
    assert engine.index.traverses() is None  # --order none
    server = kit.Server(create_app(engine, kit.LIMITS))
    try:
        status, body = server.post("/v1/locate?k=3", paths[5].read_bytes(), "image/png")
    finally:
        server.stop()
    top = body["results"][0]
    assert status == 200 and top["index"] == 5 and top["name"] == "street/frame05.png" and top["score"] > 0.9999
    assert all(top[key] is None for key in ("utm_east", "utm_north", "utm_zone", "lat", "lon"))


def test_latitude_longitude_and_zone_come_back_where_the_names_carry_them(tmp_path, kit):
    """Names with everything (as gmberton writes them), names with UTM only and --utm-zone, names with no zone."""
    from loqi_plugin_serve.engine import load_engine

    full = [f"@{e:.3f}@{n:.3f}@{z[:-1]}@{z[-1]}@{lat}@{lon}@@@@@@@@@.png" for e, n, z, lat, lon in PROJ]
    _images(tmp_path / "full", full)
    index = build_index(_config(kit, tmp_path), None, tmp_path / "i1", database=tmp_path / "full", echo=lambda _: None)
    engine = load_engine(index, device="cpu")
    for i, (east, north, zone, lat, lon) in enumerate(PROJ):
        row = next(r for r in [engine.place(j) for j in range(len(PROJ))] if r["name"] == sorted(full)[i])
        want = next(p for p in PROJ if f"@{p[0]:.3f}@" in row["name"])
        assert (row["utm_east"], row["utm_north"], row["utm_zone"]) == (round(want[0], 3), round(want[1], 3), want[2])
        assert (row["lat"], row["lon"]) == (want[3], want[4])  # as the name gives them

    utm_only = [f"@{e:.3f}@{n:.3f}@@@@@@@@@@@@.png" for e, n, z, _, _ in PROJ if z.endswith("T")]  # Madrid, zone 30T
    _images(tmp_path / "utm", utm_only)
    zoned = build_index(_config(kit, tmp_path), None, tmp_path / "i2", database=tmp_path / "utm", utm_zone=(30, "T"),
                        echo=lambda _: None)  # fmt: skip
    row = load_engine(zoned, device="cpu").place(0)
    assert row["utm_zone"] == "30T" and read_meta(zoned)["utm_zone"] == "30T"
    assert abs(row["lat"] - 40.4168) < 1e-7 and abs(row["lon"] + 3.7038) < 1e-7
    plain = build_index(_config(kit, tmp_path), None, tmp_path / "i3", database=tmp_path / "utm", echo=lambda _: None)
    row = load_engine(plain, device="cpu").place(0)
    assert row["utm_east"] == 440290.458 and (row["utm_zone"], row["lat"], row["lon"]) == (None, None, None)

    runner = CliRunner()
    bad = runner.invoke(_cli(), ["index", "build", "--method", "lite0-gem", "--database", str(tmp_path / "utm"),
                                 "--utm-zone", "33I", "--out", str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code == 1 and 'Error: --utm-zone: "33I" is not a UTM zone' in bad.output
    both = runner.invoke(_cli(), ["index", "build", "--method", "lite0-gem", "--dataset", "demo", "--database",
                                  str(tmp_path / "utm"), "--out", str(tmp_path / "x")])  # fmt: skip
    assert both.exit_code == 1 and "--dataset NAME (a test set's database) or --database FOLDER, not both" in both.output
    order = runner.invoke(_cli(), ["index", "build", "--method", "lite0-gem", "--dataset", "demo", "--order", "name",
                                   "--out", str(tmp_path / "x")])  # fmt: skip
    assert order.exit_code == 1 and "--order applies to --database" in order.output
    assert not (tmp_path / "x").exists()


def _search_all(index, queries: np.ndarray) -> list[list[str]]:
    ids, _ = index.search(queries, 4)
    return [[index.names[i] for i in row] for row in ids]


def test_index_add_appends_without_encoding_again_and_equals_a_build_of_both(tmp_path, kit, monkeypatch):
    import loqi_plugin_serve.index as index_module

    _images(tmp_path / "both/a", [f"a{i:02d}.png" for i in range(10)], seed=1)
    _images(tmp_path / "both/b", [f"b{i:02d}.png" for i in range(6)], seed=2)
    config = _config(kit, tmp_path)
    index = build_index(config, None, tmp_path / "index", database=tmp_path / "both/a", order="name", echo=lambda _: None)
    before = open_index(index)
    old_rows = np.array(before.descriptors)
    encoded: list[int] = []
    real = index_module._encode
    monkeypatch.setattr(index_module, "_encode", lambda model, images, *a: encoded.append(len(images)) or real(model, images, *a))
    add_to_index(index, tmp_path / "both/b", config, order="name", echo=lambda _: None)
    assert encoded == [6]  # only the new images were encoded

    added = open_index(index)
    whole = open_index(build_index(config, None, tmp_path / "whole", database=tmp_path / "both", order="name",
                                   echo=lambda _: None))  # fmt: skip
    assert added.names == [n.split("/", 1)[1] for n in whole.names]
    np.testing.assert_array_equal(np.asarray(added.descriptors[:10]), old_rows)  # the index's rows, byte for byte
    np.testing.assert_allclose(np.asarray(added.descriptors), np.asarray(whole.descriptors), atol=1e-6)
    assert added.traverses() == [list(range(10)), list(range(10, 16))] == whole.traverses()
    assert added.thumbnail(12) == whole.thumbnail(12) and added.thumbnail(3) == whole.thumbnail(3)
    rng = np.random.default_rng(0)
    queries = np.asarray(whole.descriptors) + rng.normal(0, 0.05, whole.descriptors.shape).astype(np.float32)
    assert _search_all(added, queries) == [[n.split("/", 1)[1] for n in row] for row in _search_all(whole, queries)]
    meta = read_meta(index)
    assert meta["database_images"] == 16 and meta["additions"][0]["images"] == 6 and meta["additions"][0]["first"] == 10
    info = CliRunner().invoke(_cli(), ["index", "info", str(index), "--verify"])
    assert info.exit_code == 0 and "added: 6 images of" in info.output, info.output

    with pytest.raises(IndexDirError, match="the index already holds an image named 'b00.png' \\(added twice\\?\\)"):
        add_to_index(index, tmp_path / "both/b", config, echo=lambda _: None)
    assert read_meta(index)["database_images"] == 16


def test_index_add_is_all_or_nothing(tmp_path, kit, monkeypatch):
    """A new index that fails its check (here: a FAISS file of other vectors) never replaces the old one; a damaged
    index is refused before anything is encoded; nothing is left beside the index."""
    import loqi_plugin_serve.index as index_module

    _images(tmp_path / "a", [f"{i:02d}.png" for i in range(8)], seed=1)
    _images(tmp_path / "b", [f"b{i:02d}.png" for i in range(4)], seed=2)
    config = _config(kit, tmp_path)
    index = build_index(config, None, tmp_path / "index", database=tmp_path / "a", echo=lambda _: None)
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    flat = index_module._flat_index
    monkeypatch.setattr(index_module, "_flat_index", lambda d: flat(np.ascontiguousarray(np.asarray(d)[::-1])))
    with pytest.raises(IndexDirError, match="does not hold the vectors of descriptors.npy"):
        add_to_index(index, tmp_path / "b", config, echo=lambda _: None)
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cache", "index"]
    monkeypatch.undo()

    data = bytearray((index / "utm.npy").read_bytes())
    data[-1] ^= 1
    (index / "utm.npy").write_bytes(bytes(data))
    failed = CliRunner().invoke(_cli(), ["index", "add", str(index), str(tmp_path / "b"), "--device", "cpu",
                                         "--cache-dir", str(tmp_path / "cache"), "-s", "eval.num_workers=0"])  # fmt: skip
    assert failed.exit_code == 1 and "utm.npy: sha256 differs from index.json" in failed.output
    assert "nothing was added" in failed.output and "encoding" not in failed.output


def test_index_add_to_ivfpq_adds_codes_then_trains_again_once_the_database_doubled(tmp_path, kit):
    import faiss

    _images(tmp_path / "a", [f"{i:03d}.png" for i in range(80)], seed=1)
    _images(tmp_path / "b", [f"b{i:03d}.png" for i in range(40)], seed=2)
    _images(tmp_path / "c", [f"c{i:03d}.png" for i in range(60)], seed=3)
    from loqi_core.plugin import IVFPQParams

    config = _config(kit, tmp_path)
    index = build_index(config, None, tmp_path / "index", database=tmp_path / "a", backend="ivfpq",
                        ivf=IVFPQParams(nlist=2, m=8), thumbnails=False, echo=lambda _: None)  # fmt: skip
    trained = open_index(index).faiss_index
    add_to_index(index, tmp_path / "b", config, echo=lambda _: None)  # 120 <= 2 x 80: the same quantizer, new codes
    grown = open_index(index)
    assert grown.meta["search"]["trained_on"] == 80 and grown.faiss_index.ntotal == 120
    np.testing.assert_array_equal(faiss.vector_to_array(grown.faiss_index.pq.centroids),
                                  faiss.vector_to_array(trained.pq.centroids))  # fmt: skip
    add_to_index(index, tmp_path / "c", config, echo=lambda _: None)  # 180 > 2 x 80: trained again
    again = open_index(index)
    assert again.meta["search"]["trained_on"] == 180 and again.faiss_index.ntotal == 180
    assert json.loads((index / "index.json").read_text())["search"]["m"] == 8
    shutil.rmtree(index)
