"""The degraded-image cache: raw uint8 shards, read back exactly, checked like the descriptors, older formats refused."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from loqi_core.config import EvalConfig
from loqi_core.data.datasets import load_dataset
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.evaluation.cache import SHARD_FORMAT, EvalCache, read_shard, seal, sidecar_of, write_shard
from loqi_core.evaluation.engine import ExtractStats, evaluate, extract
from loqi_core.models.model import build_model
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

CFG = EvalConfig(batch_size=4, num_workers=0)


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for shape in [(3, 5, 7), (3, 9, 4), (1, 2, 3)]]


def test_shard_round_trip_is_exact_for_mixed_shapes(tmp_path):
    path = tmp_path / "shard_00000.bin"
    images = _images()
    write_shard(path, images, [10, 20, 30], [4, 5, 6])
    assert path.stat().st_size == sum(img.numel() for img in images)  # raw bytes, nothing else
    indices, back, nbytes = read_shard(path)
    assert indices == [4, 5, 6] and nbytes == [10, 20, 30]
    for a, b in zip(images, back):
        assert b.dtype == torch.uint8 and torch.equal(a, b)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "grow", "no sidecar", "sidecar lies about size"])
def test_damaged_shard_is_deleted_not_read(tmp_path, damage, caplog):
    path = tmp_path / "shard_00000.bin"
    write_shard(path, _images(), None, [0, 1, 2])
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-1]))
    elif damage == "grow":
        path.write_bytes(bytes(data) + b"\0")
    elif damage == "no sidecar":
        sidecar_of(path).unlink()
    else:
        record = json.loads(sidecar_of(path).read_text())
        sidecar_of(path).write_text(json.dumps({**record, "size": 10**12}))
    with caplog.at_level(logging.WARNING, logger="loqi.cache"):
        assert read_shard(path) is None
    assert not path.exists() and not sidecar_of(path).exists()
    assert "rebuilding" in caplog.text


def _png_shard(path, images, indices):
    """A shard as loqi wrote it before SHARD_FORMAT: lossless PNGs concatenated, offsets in a sealed sidecar."""
    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="PNG", compress_level=1)
        blobs.append(buf.getvalue())
    path.write_bytes(b"".join(blobs))
    seal(path, {"offsets": np.cumsum([0] + [len(b) for b in blobs]).tolist(), "indices": indices, "nbytes": None})


def test_a_shard_in_the_old_png_format_is_refused_and_deleted(tmp_path, caplog):
    path = tmp_path / "shard_00000.bin"
    _png_shard(path, [img.expand(3, -1, -1) for img in _images()], [0, 1, 2])
    with caplog.at_level(logging.WARNING, logger="loqi.cache"):
        assert read_shard(path) is None
    assert "another format (PNG)" in caplog.text and not path.exists()


@pytest.fixture()
def tiny(tmp_path):
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        model = build_model("tiny", weights="random")
        root = write_vpr_folder(tmp_path / "data", places=8)
        yield plugins, model, load_dataset(f"folder:{root}", "test"), EvalCache(tmp_path / "cache")


def _extract(model, images, cache, spec, run):
    kw = dict(cache=cache, key={"run": run}, device=torch.device("cpu"), batch_size=4)
    return np.asarray(extract(model, images, parse_degradation(spec), **kw))


def test_an_old_cache_is_never_misread_and_its_images_are_remade(tiny):
    """Old-format shards, at the old key's folder and planted at the new one (with wrong content): neither is read."""
    plugins, model, test, cache = tiny
    reference = _extract(model, test.database, cache, "blur3", "reference")
    fresh = EvalCache(cache.root.parent / "other")
    folder = next((cache.root / "eval" / "images").iterdir())
    assert json.loads((folder / "key.json").read_text())["format"] == SHARD_FORMAT
    wrong = [torch.zeros(3, 16, 24, dtype=torch.uint8)] * len(test.database)
    _png_shard(folder / "shard_00000.bin", wrong, list(range(len(test.database))))  # planted in the new folder
    stats = {}
    result = evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu", stats=stats)
    assert stats["database"].image_shards == {"rebuilt": 1}
    np.testing.assert_array_equal(np.asarray(result.database_descriptors), reference)
    assert json.loads(sidecar_of(folder / "shard_00000.bin").read_text())["format"] == SHARD_FORMAT
    # a cache as the old loqi left it: PNG shards under the key without a format; this loqi looks elsewhere
    old = fresh.entry("images", {k: v for k, v in json.loads((folder / "key.json").read_text()).items() if k != "format"})
    _png_shard(old / "shard_00000.bin", wrong, list(range(len(test.database))))
    again = _extract(model, test.database, fresh, "blur3", "fresh")
    np.testing.assert_array_equal(again, reference)
    assert (old / "shard_00000.bin").exists()  # untouched: never opened


def test_a_shard_holding_other_images_is_rebuilt(tiny):
    plugins, model, test, cache = tiny
    reference = _extract(model, test.database, cache, "blur3", "a")
    shard = next((cache.root / "eval" / "images").rglob("shard_00000.bin"))
    _, images, _ = read_shard(shard)
    write_shard(shard, images[::-1], None, list(range(len(images)))[::-1])  # intact, sealed, other order
    stats = {}
    evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu", stats=stats)
    assert stats["database"].image_shards == {"rebuilt": 1}
    np.testing.assert_array_equal(_extract(model, test.database, cache, "blur3", "b"), reference)


@pytest.mark.parametrize("status", ["uncached", "miss", "hit"])
def test_a_worker_hands_each_shard_over_as_one_buffer_and_nothing_changes(tiny, tmp_path, status):
    """One shared-memory block per shard (not one per image) from a worker; descriptors equal to no worker, bit for bit."""
    from torch.utils.data import DataLoader

    from loqi_core.evaluation.engine import _identity_collate, _ShardDataset

    plugins, model, test, cache = tiny
    blur = parse_degradation("blur3")
    folder = None if status == "uncached" else tmp_path / "shards"
    if folder is not None:
        folder.mkdir()
    if status == "hit":
        list(_ShardDataset(test.database, blur, 0, folder))
    loader = DataLoader(_ShardDataset(test.database, blur, 0, folder), batch_size=None, num_workers=1, collate_fn=_identity_collate)
    (indices, images, seen), = list(loader)
    assert seen == status and len(images) == len(test.database) > 1
    assert len({img.untyped_storage().data_ptr() for img in images}) == 1
    kw = dict(key={"status": status}, device=torch.device("cpu"), batch_size=3, cache_images=status != "uncached")
    alone = np.array(extract(model, test.database, blur, cache=EvalCache(tmp_path / "c0"), num_workers=0, **kw))
    if status == "hit":
        extract(model, test.database, blur, cache=EvalCache(tmp_path / "c1"), num_workers=0, **{**kw, "key": {}})
    stats = ExtractStats()
    worker = np.array(extract(model, test.database, blur, cache=EvalCache(tmp_path / "c1"), num_workers=1, stats=stats, **kw))
    assert list(stats.image_shards) == [status]
    np.testing.assert_array_equal(alone, worker)
