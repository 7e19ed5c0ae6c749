"""The evaluation engine on the tiny method: protocol, cache hits, corruption rebuilds, temporal feeding."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from loqi_core.config import EvalConfig
from loqi_core.data.datasets import load_dataset
from loqi_core.data.sets import ImageList
from loqi_core.data.sets import TestSet as VPRTestSet
from loqi_core.degrade.base import Degradation, Degraded, Identity, degradation_units, temporal_note
from loqi_core.evaluation.cache import EvalCache, check, sidecar_of
from loqi_core.evaluation.engine import describe_protocol, evaluate, extract
from loqi_core.evaluation.search import recall_at_n
from loqi_core.hooks.manager import Plugins
from loqi_core.models.model import build_model
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin, write_vpr_folder

CFG = EvalConfig(batch_size=4, num_workers=0)


@pytest.fixture()
def tiny(tmp_path):
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        model = build_model("tiny", weights="random")
        root = write_vpr_folder(tmp_path / "data", places=8)
        test = load_dataset(f"folder:{root}", "test")
        yield plugins, model, test, EvalCache(tmp_path / "cache")


def test_paper_protocol_and_recall_match_manual_pipeline(tiny):
    plugins, model, test, cache = tiny
    result = evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu")
    p = result.protocol
    assert p["database"] == "degraded (blur3)" and p["queries"] == "degraded (blur3)"
    assert p["untrained"] is True and "UNTRAINED" in describe_protocol(p)
    assert p["positive_radius_m"] == 25.0 and p["recall_at"] == [1, 2, 5, 10]
    # recompute by hand: degrade each image, encode it alone, brute-force rank
    from loqi_core.data.images import read_image
    from loqi_core.degrade.grammar import parse_degradation

    blur = parse_degradation("blur3")
    def enc(paths):
        with torch.no_grad():
            x = model.prepare([blur([read_image(pth)]).images[0] for pth in paths])
            return model(x)[1].numpy()

    db, q = enc(test.database.paths), enc(test.queries.paths)
    order = np.argsort(-(q @ db.T), axis=1, kind="stable")
    padded = np.concatenate([order, np.full((len(order), 2), -1)], 1)  # 8 database images, 10 ranks
    gt = test.ground_truth(25.0)
    assert result.recalls == recall_at_n(padded, gt, [1, 2, 5, 10])
    assert np.array_equal(result.predictions, padded)
    assert result.predictions.shape == (len(test.queries), 10)
    assert (result.predictions[:, 8:] == -1).all()  # only 8 database images


def test_cache_hit_on_second_evaluation_and_rebuilt_after_truncation(tiny):
    plugins, model, test, cache = tiny
    first = evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu")
    assert first.cache["descriptors_cached"] == [False, False]
    assert first.cache["image_shards"]["database"] == {"miss": 1}
    second = evaluate(model, test, "blur3", config=CFG, cache=EvalCache(cache.root), device="cpu")
    assert second.cache["descriptors_cached"] == [True, True]
    assert second.recalls == first.recalls and np.array_equal(second.predictions, first.predictions)

    # truncate the database descriptors: detected, rebuilt from the (intact) degraded-image shards
    desc = sorted((cache.root / "eval" / "descriptors").rglob("descriptors.npy"))
    assert len(desc) == 2
    for path in desc:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    shard = next((cache.root / "eval" / "images").rglob("shard_00000.bin"))
    shard.write_bytes(shard.read_bytes()[:-10])  # and one image shard
    third_cache = EvalCache(cache.root)
    third = evaluate(model, test, "blur3", config=CFG, cache=third_cache, device="cpu")
    assert third.cache["descriptors_cached"] == [False, False]
    assert len(third_cache.stats.rebuilt) == 2
    assert "rebuilt" in json.dumps(third.cache["image_shards"])
    assert third.recalls == first.recalls and np.array_equal(third.predictions, first.predictions)
    for path in desc:
        assert check(path) is not None


def test_corrupt_sidecar_or_missing_sidecar_is_never_trusted(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones(3, dtype=np.float32))
    assert check(path) is None  # no sidecar: a file from a killed run
    assert not path.exists()
    np.save(path, np.ones(3, dtype=np.float32))
    from loqi_core.evaluation.cache import seal

    seal(path)
    assert check(path) is not None
    arr = bytearray(path.read_bytes())
    arr[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(arr))
    assert check(path) is None and not sidecar_of(path).exists()


def test_key_changes_with_weights_and_degradation(tiny):
    plugins, model, test, cache = tiny
    evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu")
    with torch.no_grad():
        model.aggregator.p.add_(1.0)
    again = evaluate(model, test, "blur3", config=CFG, cache=cache, device="cpu")
    assert again.cache["descriptors_cached"] == [False, False]
    assert again.cache["image_shards"]["database"] == {"hit": 1}  # degraded images reused across models
    other = evaluate(model, test, "blur5", config=CFG, cache=cache, device="cpu")
    assert other.cache["image_shards"]["database"] == {"miss": 1}


EDITABLE_PLUGIN = """
from loqi_core.plugin import AggregatorSpec, EncoderSpec, Preprocess, hookimpl


def _encoder(params):
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
    net.out_channels = 8
    return net


def _aggregator(params, in_channels):
    import torch.nn.functional as F
    from torch import nn

    class Pool(nn.Module):
        def forward(self, x):
            return F.normalize(x.mean(dim=(2, 3)), dim=1)

    return Pool()


@hookimpl
def loqi_register_encoders(register):
    register(EncoderSpec("edited", _encoder, preprocess=Preprocess(size=(32, 32))))


@hookimpl
def loqi_register_aggregators(register):
    register(AggregatorSpec("edited", _aggregator))
"""


def test_key_follows_an_edit_of_the_plugin_code_at_the_same_version(tmp_path, monkeypatch):
    """Issue #27: a plugin's forward edited without a version bump must not be served from the cache."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    source = tmp_path / "loqi_edited_plugin.py"
    source.write_text(EDITABLE_PLUGIN)
    module = importlib.import_module("loqi_edited_plugin")
    cache = EvalCache(tmp_path / "cache")
    test = load_dataset(f"folder:{write_vpr_folder(tmp_path / 'data', places=8)}", "test")

    def run(use_cache=True):
        plugins = Plugins()
        plugins.load_defaults()
        plugins.add(module, name="edited", dist="loqi-plugin-edited", version="0.1.0")
        model = build_model("edited", weights="random", plugins=plugins)
        return evaluate(model, test, "none", config=CFG, cache=cache if use_cache else EvalCache(enabled=False),
                        device="cpu", plugins=plugins)

    try:
        first = run()
        assert run().cache["descriptors_cached"] == [True, True]  # unchanged code: the cache serves it
        source.write_text(EDITABLE_PLUGIN.replace("x.mean(dim=(2, 3))", "x.amax(dim=(2, 3))"))
        module = importlib.reload(module)
        edited = run()
        assert edited.cache["descriptors_cached"] == [False, False], "descriptors of the old code served from cache"
        assert not np.allclose(edited.scores, first.scores), "the edit changes the descriptors"
        fresh = run(use_cache=False)
        assert edited.recalls == fresh.recalls and np.array_equal(edited.predictions, fresh.predictions)
    finally:
        sys.modules.pop("loqi_edited_plugin", None)


def test_clean_database_protocol(tiny):
    plugins, model, test, cache = tiny
    r = evaluate(model, test, "blur3", config=CFG.model_copy(update={"clean_database": True}), cache=cache, device="cpu")
    assert r.protocol["database"] == "clean" and r.protocol["queries"] == "degraded (blur3)"
    clean = evaluate(model, test, "none", config=CFG, cache=cache, device="cpu")
    assert clean.protocol["queries"] == "clean"
    assert clean.cache["descriptors_cached"][0] is True  # the clean database descriptors were shared


def test_queries_without_positives_count_as_misses(tiny):
    plugins, model, test, cache = tiny
    far = VPRTestSet("far", test.database, ImageList(test.queries.paths, test.queries.positions + 1e4))
    r = evaluate(model, far, "none", config=CFG, cache=cache, device="cpu")
    assert all(v == 0.0 for v in r.recalls.values())
    assert "8 of 8" in r.protocol["queries_without_positives"]


def test_explicit_ground_truth(tiny):
    plugins, model, test, cache = tiny
    gt = [np.arange(len(test.database))] * len(test.queries)
    explicit = VPRTestSet("explicit", test.database, ImageList(test.queries.paths), positives=gt)
    r = evaluate(model, explicit, "none", config=CFG, cache=cache, device="cpu")
    assert r.recalls["R@1"] == 100.0 and r.protocol["positive_radius_m"] is None


class Recorder(Degradation):
    """A temporal degradation that records the calls it receives (and darkens by call length)."""

    temporal = True
    spec = "recorder"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, images, *, seed=0):
        self.calls.append(len(images))
        return Degraded([img // 2 for img in images], [100] * len(images))


def test_temporal_degradation_gets_whole_sequences_or_single_images(tiny, tmp_path):
    plugins, model, test, cache = tiny
    ordered = ImageList(test.database.paths, test.database.positions, sequences=[[0, 1, 2, 3], [4, 5, 6]])
    deg = Recorder()
    assert degradation_units(ordered, deg) == [[0, 1, 2, 3], [4, 5, 6], [7]]
    assert "2 capture-order sequences" in temporal_note(ordered, deg)
    assert "own one-frame stream" in temporal_note(test.database, deg)
    extract(model, ordered, deg, cache=cache, key={"model": "m"}, device=torch.device("cpu"), batch_size=3)
    assert sorted(deg.calls) == [1, 3, 4]
    deg2 = Recorder()
    extract(model, test.database, deg2, cache=cache, key={"model": "m"}, device=torch.device("cpu"), batch_size=3)
    assert deg2.calls == [1] * len(test.database)


def test_images_of_different_sizes_are_batched_apart(tiny, tmp_path):
    plugins, model, test, cache = tiny
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(40, 30), (64, 48), (40, 30), (64, 48), (50, 50)]):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, dtype=np.uint8)).save(p)
        paths.append(p)
    native = build_model("tiny", weights="random", image_size=None)
    native.preprocess = native.preprocess.model_copy(update={"size": None})  # keep each image's own size
    desc = extract(native, ImageList(paths), Identity(), cache=cache, key={"model": "native"},
                   device=torch.device("cpu"), batch_size=2)
    assert desc.shape[0] == 5 and np.allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-4)


def test_search_on_extracted_memory_maps(tiny):
    plugins, model, test, cache = tiny
    r = evaluate(model, test, "none", config=CFG.model_copy(update={"index": "torch"}), cache=cache, device="cpu")
    f = evaluate(model, test, "none", config=CFG.model_copy(update={"index": "flat"}), cache=cache, device="cpu")
    assert np.array_equal(r.predictions, f.predictions) and "torch top-k" in r.protocol["search"]



def test_worker_processes_give_the_same_descriptors(tiny, tmp_path):
    plugins, model, test, cache = tiny
    kw = dict(key={"model": "w"}, device=torch.device("cpu"), batch_size=3, cache_images=False)
    from loqi_core.degrade.grammar import parse_degradation

    blur = parse_degradation("blur3")
    alone = np.array(extract(model, test.queries, blur, cache=EvalCache(tmp_path / "c0"), num_workers=0, **kw))
    workers = np.array(extract(model, test.queries, blur, cache=EvalCache(tmp_path / "c2"), num_workers=2, **kw))
    assert np.allclose(alone, workers, atol=1e-6)


def test_protocol_states_how_each_list_met_a_temporal_codec(tiny):
    plugins, model, test, cache = tiny
    ordered = VPRTestSet("seq", ImageList(test.database.paths, test.database.positions, sequences=[[0, 1, 2, 3], [4, 5, 6, 7]]),
                         test.queries)
    r = evaluate(model, ordered, Recorder(), config=CFG, cache=cache, device="cpu")
    assert r.protocol["temporal"].startswith("database: temporal codec: each of 2 capture-order sequences")
    assert "queries: temporal codec, but the images have no capture order" in r.protocol["temporal"]


def test_loader_workers_are_fitted_to_the_cpus_unless_given(tiny, monkeypatch):
    """eval.num_workers unset: as many decode workers as loqi_core.util.cpus allows (none on a 2-core CPU machine)."""
    plugins, model, test, cache = tiny
    import loqi_core.evaluation.engine as evaluation

    seen: list[int] = []
    real = evaluation.extract
    monkeypatch.setattr(evaluation, "extract", lambda *a, **kw: (seen.append(kw["num_workers"]), real(*a, **kw))[1])
    monkeypatch.setattr("loqi_core.util.cpus.available_cpus", lambda: 2)
    evaluate(model, test, "blur3", config=EvalConfig(batch_size=4), cache=cache, device="cpu")
    assert EvalConfig().num_workers is None and seen == [0, 0]  # database and queries, no worker on 2 CPUs
    seen.clear()
    monkeypatch.setattr("loqi_core.util.cpus.available_cpus", lambda: 8)
    evaluate(model, test, "blur3", config=EvalConfig(batch_size=4), cache=cache, device="cpu")
    assert seen == [2, 2]  # a quarter of 8 CPUs
    seen.clear()
    evaluate(model, test, "blur3", config=EvalConfig(batch_size=4, num_workers=1), cache=cache, device="cpu")
    assert seen == [1, 1]  # asked for


def test_an_image_is_refused_only_when_the_preprocessing_would_enlarge_it_past_the_bound(tmp_path):
    """A 20000×1 strip that a short side of 128 makes 327 M pixels is refused by name; an image the model sees at its
    own size (or smaller) never is, however large, nor is a small one enlarged within the bound."""
    from loqi_core.data.images import ImageTooLargeError
    from loqi_core.evaluation.engine import MAX_ENLARGED_PIXELS, check_enlargement
    from loqi_core.plugin import Preprocess

    lite0 = Preprocess(min_side=128)
    shape = lambda h, w: torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, h, w)  # noqa: E731  (no pixels allocated)
    with pytest.raises(ImageTooLargeError, match=r"strip\.png: it is 20000×1, .* enlarge it to 2560000×128"):
        check_enlargement(shape(1, 20000), lite0, tmp_path / "strip.png")
    check_enlargement(shape(32, 64), lite0, tmp_path / "small.png")  # 128×256: enlarged, within the bound
    check_enlargement(shape(4100, 4100), Preprocess(), tmp_path / "large.png")  # 16.8 M pixels at its own size
    assert 4100 * 4100 > MAX_ENLARGED_PIXELS
    check_enlargement(shape(6000, 8000), Preprocess(size=(224, 224)), tmp_path / "photo.jpg")  # made smaller
