"""The LoQI-VPR authors' training recipe under ``--protocol paper``, item by item against their code
(``trainer_gsv-cities.py``, ``dataset/gsv_cities_data.py``, ``dataset/Data_Control.py``, ``configs/trainer.yaml``;
``../shared/reference/loqi_reference.md``, "Losses" and "Optimisation"), on tiny GSV-Cities and Pitts30k-val
folders in their real on-disk layouts."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from loqi_core import load_dataset
from loqi_core.config import resolve_run_config
from loqi_core.data.sets import ImageList, TrainSet
from loqi_core.evaluation.cache import EvalCache
from loqi_core.hooks.manager import get_plugins
from loqi_core.losses.expression import build_loss
from loqi_core.losses.paper import paper_weighting
from loqi_core.losses.terms import DistillBatch
from loqi_core.testing import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin
from loqi_core.training import mining
from loqi_core.training.data import BatchPlan, PlanConfig
from loqi_core.training.recipe import build_training_data, encoder_spec, set_train_modes, training_loss

_spec = importlib.util.spec_from_file_location("paper_data", Path(__file__).with_name("paper_data.py"))
paper_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_data)  # type: ignore[union-attr]
write_gsv_cities, write_split = paper_data.write_gsv_cities, paper_data.write_split


pytestmark = pytest.mark.usefixtures("one_thread")


def paper_config(method: str = "netvlad", **overrides):
    return resolve_run_config(None, {"model.method": method, "protocol": "paper", "distill.train": "gsv-cities",
                                     "distill.num_workers": 0, **overrides})  # fmt: skip


# ---- the protocol's settings ------------------------------------------------------------------------------------


def test_paper_protocol_sets_the_authors_training_recipe():
    c = paper_config()
    d = c.distill
    assert (d.view_size, d.augment, d.mine) == ("native", False, True)  # raw files, no augmentation, mined tuples
    assert (d.places_per_batch, d.images_per_place, d.epochs) == (6, 4, 1)  # batch_size 6 places, 4 images, nepoch 1
    assert (d.freeze_bn, d.bn_scope, d.dropout) == (False, "all", True)  # model.train() on the whole student
    assert d.tf32 and d.precision == "fp32"  # cuda.matmul.allow_tf32 = True; autocast(float32)
    assert (d.lr, d.gamma, d.clip_grad_norm) == (1e-6, 0.99999, 1.0)
    upstream = resolve_run_config(None, {"model.method": "netvlad"}).distill
    assert (upstream.mine, upstream.bn_scope, upstream.tf32, upstream.view_size) == (False, "trainable", False, None)


def test_native_views_cannot_be_augmented():
    from loqi_core.errors import ConfigError

    with pytest.raises(ConfigError, match='view_size "native" keeps every image as it is: set augment to false'):
        resolve_run_config(None, {"model.method": "netvlad", "distill.view_size": "native"})


def test_config_records_the_resolved_preprocessing_and_refuses_another():
    from loqi_core.errors import ConfigError

    mixvpr = paper_config("mixvpr").model.preprocess
    assert mixvpr["size"] == [320, 320] and mixvpr["interpolation"] == "bicubic" and mixvpr["antialias"] is False
    assert resolve_run_config(None, {"model.method": "mixvpr"}).model.preprocess["antialias"] is True  # upstream
    salad = paper_config("salad").model.preprocess
    assert salad["size"] is None and salad["multiple_of"] == 14 and salad["max_side"] == 1024
    assert paper_config("netvlad", **{"model.image_size": [16, 24]}).model.preprocess["size"] == [16, 24]
    with pytest.raises(ConfigError, match="model.preprocess is recorded, not set"):
        paper_config("mixvpr", **{"model.preprocess": {**mixvpr, "antialias": True}})


def test_a_method_the_paper_never_used_says_so():
    from loqi_core.protocol import protocol_notes

    plugins = get_plugins()
    notes = protocol_notes("paper", plugins.method("lite0-gem")[0])
    assert any("lite0-gem: not one of the paper's methods" in n and "no published number" in n for n in notes)
    assert not any("not one of the paper's methods" in n for n in protocol_notes("paper", plugins.method("mixvpr")[0]))


# ---- the training images and views -------------------------------------------------------------------------------


def test_teacher_sees_the_raw_file_and_the_student_a_pil_jpeg10_file_of_it(tmp_path):
    """gsv_cities_data.resize_images: Image.open(raw).save(dst, "JPEG", quality=10); Data_Control reads both with
    PIL at their size (ToTensor, no resize, no crop, no flip)."""
    root = write_gsv_cities(tmp_path / "gsv", cities=("OSL", "PRG"), size=(30, 40))
    config = paper_config(**{"distill.train": f"gsv-cities:{root}?cities=[OSL, PRG]"})
    plugins = get_plugins()
    spec = encoder_spec(config, plugins)
    loss = training_loss(config, "distill", spec, plugins)
    train, plan, dataset = build_training_data(config, loss, spec, plugins)
    batch = dataset[0]
    assert batch["clean"].shape[-2:] == (30, 40) and batch["degraded"].shape[-2:] == (30, 40)
    index, _ = plan.batch(0)[1][0]
    raw = train.images.paths[index]
    file = io.BytesIO()
    Image.open(raw).save(file, "JPEG", quality=10)
    teacher = torch.from_numpy(np.array(Image.open(raw).convert("RGB"))).permute(2, 0, 1)
    student = torch.from_numpy(np.array(Image.open(file).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(batch["clean"][0], teacher)
    assert torch.equal(batch["degraded"][0], student)
    again = dataset[0]  # no augmentation: the same views every time
    assert torch.equal(again["clean"], batch["clean"])


def test_native_views_of_several_sizes_in_one_batch_are_one_clear_error(tmp_path):
    from loqi_core.errors import DataError

    root = write_gsv_cities(tmp_path / "gsv", cities=("OSL",), size=(30, 40))
    for path in sorted((root / "Images" / "OSL").iterdir())[:4]:  # the whole first place at another size
        Image.open(path).resize((50, 40)).save(path)
    config = paper_config(**{"distill.train": f"gsv-cities:{root}?cities=[OSL]", "distill.places_per_batch": 3})
    plugins = get_plugins()
    spec = encoder_spec(config, plugins)
    _, _, dataset = build_training_data(config, training_loss(config, "distill", spec, plugins), spec, plugins)
    with pytest.raises(DataError, match="native views: every image of a batch must have one size"):
        dataset[0]


# ---- mining ------------------------------------------------------------------------------------------------------


def _rows(desc: np.ndarray) -> "mining._Rows":
    return mining._Rows([desc[i : i + mining.CHUNK] for i in range(0, len(desc), mining.CHUNK)])


def test_pairs_within_a_radius_match_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 200, (300, 2)) + 5e6  # UTM-sized coordinates
    i, j = mining.pairs_within(pos, 20.0)
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    want = np.argwhere(d <= 20.0)
    assert np.array_equal(np.stack([i, j], 1), want)


def test_mined_positive_is_the_teachers_most_similar_image_within_20_m():
    """find_neighbors: candidates within 20 m ranked by the teacher's descriptor inner product, the image's own
    similarity set to 0; positives[0] is used."""
    pos = np.array([[0, 0], [15, 0], [5, 0], [200, 0], [400, 0], [600, 0], [800, 0], [1000, 0], [0, 19.9]], float)
    desc = np.zeros((9, 4), np.float32)
    desc[:, 0] = 1.0
    desc[1] = [0.2, 0.98, 0, 0]  # far from anchor 0 in descriptor space although close in metres
    desc[2] = [0.6, 0.8, 0, 0]
    desc[8] = [0.9, 0.1, 0.42, 0]
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    got = mining.mine_group(_rows(desc), pos, np.random.default_rng(0))
    assert got.positives[0] == 8  # most similar within 20 m, not the nearest (2) nor the farthest (1)
    assert got.positives[1] == 2  # 0 is 15 m away but less similar than 2 (10 m)
    assert got.positives[3] == 3  # nothing else within 20 m: its own image (similarity 0), as theirs


def test_mined_negatives_are_random_images_of_the_group_beyond_30_m():
    rng = np.random.default_rng(1)
    pos = np.concatenate([np.zeros((4, 2)) + [k * 25.0, 0] for k in range(3)] + [rng.uniform(100, 900, (20, 2))])
    desc = rng.normal(size=(len(pos), 8)).astype(np.float32)
    got = mining.mine_group(_rows(desc), pos, np.random.default_rng(2))
    assert got.negatives.shape == (len(pos), 5)
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    for a in range(len(pos)):
        assert (dist[a, got.negatives[a]] > 30.0).all() and len(set(got.negatives[a])) == 5
    other = mining.mine_group(_rows(desc), pos, np.random.default_rng(3))
    assert not np.array_equal(other.negatives, got.negatives)  # random, not the hardest
    assert np.array_equal(other.positives, got.positives)  # positives do not depend on the draw
    # uniform: over many draws every far image is drawn about equally often for anchor 0
    counts = np.zeros(len(pos))
    for s in range(300):
        counts[mining.mine_group(_rows(desc), pos, np.random.default_rng(s)).negatives[0]] += 1
    far = dist[0] > 30
    assert counts[~far].sum() == 0 and counts[far].min() > 0.5 * counts[far].mean()


def test_an_image_with_fewer_than_5_far_images_is_no_anchor():
    pos = np.array([[0, 0], [1, 0], [100, 0], [200, 0], [300, 0], [400, 0]], float)
    got = mining.mine_group(_rows(np.eye(6, dtype=np.float32)), pos, np.random.default_rng(0))
    assert got.usable.tolist() == [False, False, True, True, True, True]  # 4 far images for 0 and 1


def _tiny_gsv(tmp_path, cities=("OSL", "PRG"), places=3):
    root = write_gsv_cities(tmp_path / "gsv", cities=cities, places=places, size=(30, 40))
    train = load_dataset(f"gsv-cities:{root}", "train", params={"cities": list(cities)})
    assert isinstance(train, TrainSet)
    return train


def test_mining_per_city_with_the_teacher_cached_and_resumable(tmp_path, monkeypatch):
    """Negatives from the anchor's own city (the authors mine city by city); the teacher's descriptors and the
    tuples are cached; a mining killed after its first chunk reuses that chunk."""
    from loqi_core import build_model

    train = _tiny_gsv(tmp_path)
    assert train.groups is not None and sorted(set(train.groups.tolist())) == [0, 1]
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        teacher = build_model("tiny", weights="random", plugins=plugins).eval()
        cache = EvalCache(tmp_path / "cache")
        kw = dict(cache=cache, plugins=plugins, device=torch.device("cpu"), seed=5)
        monkeypatch.setattr(mining, "CHUNK", 4)  # 12 images per city: 3 chunks each
        calls = []
        real = mining.extract

        def dying_extract(*args, **kwargs):
            calls.append(kwargs["label"])
            if len(calls) == 2:
                raise KeyboardInterrupt  # killed while encoding the second chunk
            return real(*args, **kwargs)

        monkeypatch.setattr(mining, "extract", dying_extract)
        with pytest.raises(KeyboardInterrupt):
            mining.mine(teacher, train, **kw)
        monkeypatch.setattr(mining, "extract", real)
        stats_before = len(cache.stats.hits)
        got = mining.mine(teacher, train, **kw)
        assert len(cache.stats.hits) > stats_before  # the first chunk came from the cache
        groups = train.groups
        assert got.usable.all()
        for a in range(len(groups)):
            assert (groups[got.negatives[a]] == groups[a]).all()  # same city
            assert groups[got.positives[a]] == groups[a]
        descs = [real(teacher, ImageList(train.images.paths), mining.Identity(), cache=cache,
                      key=mining.descriptor_key(teacher, "fp32", torch.device("cpu"), plugins), plugins=plugins)]
        sims = np.asarray(descs[0]) @ np.asarray(descs[0]).T
        pos = train.images.positions
        for a in range(len(groups)):
            near = np.flatnonzero(((pos - pos[a]) ** 2).sum(1) <= 20.0**2)
            s = sims[a, near].copy()
            s[near == a] = 0
            assert got.positives[a] == near[np.argmax(s)]

        def no_extract(*args, **kwargs):
            raise AssertionError("mined tuples should come from the cache")

        monkeypatch.setattr(mining, "extract", no_extract)
        again = mining.mine(teacher, train, **kw)
        assert np.array_equal(again.negatives, got.negatives) and np.array_equal(again.positives, got.positives)


def test_mining_needs_positions(tmp_path):
    from loqi_core.errors import ConfigError

    train = TrainSet("plain", ImageList([tmp_path / "a.png"]))
    with pytest.raises(ConfigError, match="distill.mine: training set \"plain\" has no positions"):
        mining.mine(None, train, cache=EvalCache(tmp_path), plugins=get_plugins(), device=torch.device("cpu"))  # type: ignore[arg-type]


# ---- the 168-image step ------------------------------------------------------------------------------------------


def test_a_mined_step_is_6_places_x_4_anchors_x_7_images_in_the_authors_order(tmp_path):
    """Data_Control.GSVCitiesDataset: a batch is 6 places, 4 images drawn per place, each image an anchor followed by
    its positive and its negatives: 24 × 7 = 168 images per step."""
    train = _tiny_gsv(tmp_path, cities=("OSL", "PRG", "TRT", "PRS"), places=3)
    n = len(train.images)
    rng = np.random.default_rng(0)
    mined = mining.Mined(rng.integers(0, n, n), rng.integers(0, n, (n, 5)))
    plan = BatchPlan(train, PlanConfig(True, 6, 4, 24, seed=0), mined)
    assert plan.images_per_step == 168 and plan.tuple_size == 7
    epoch, batch = plan.batch(0)
    assert len(batch) == 168
    anchors = [batch[k][0] for k in range(0, 168, 7)]
    places = [int(train.place_ids[a]) for a in anchors]
    assert len(set(places)) == 6 and all(places.count(p) == 4 for p in set(places))
    for k, a in enumerate(anchors):
        assert [i for i, _ in batch[7 * k : 7 * k + 7]] == [a, mined.positives[a], *mined.negatives[a]]
        assert all(pid == train.place_ids[i] for i, pid in batch[7 * k : 7 * k + 7])


def test_an_unusable_image_is_never_an_anchor(tmp_path):
    train = _tiny_gsv(tmp_path, cities=("OSL", "PRG"), places=3)
    n = len(train.images)
    negatives = np.tile(np.arange(5), (n, 1))
    negatives[::2] = -1  # every other image has no tuple
    plan = BatchPlan(train, PlanConfig(True, 2, 4, 8, seed=0), mining.Mined(np.arange(n), negatives))
    for step in range(plan.steps_per_epoch):
        batch = plan.batch(step)[1]
        assert all(batch[k][0] % 2 == 1 for k in range(0, len(batch), 7))


def test_the_step_dataset_hands_the_triplets_to_the_loss(tmp_path):
    train = _tiny_gsv(tmp_path, cities=("OSL", "PRG"), places=3)
    config = paper_config(**{"distill.train": "x", "distill.places_per_batch": 2, "distill.images_per_place": 2})
    plugins = get_plugins()
    spec = encoder_spec(config, plugins)
    loss = training_loss(config, "distill", spec, plugins)
    n = len(train.images)
    mined = mining.Mined(np.arange(n)[::-1].copy(), np.tile(np.arange(5), (n, 1)))
    _, plan, dataset = build_training_data(config, loss, spec, plugins, train=train, mined=mined)
    batch = dataset[0]
    assert batch["clean"].shape[0] == 2 * 2 * 7 and batch["triplets"].tolist() == np.arange(28).reshape(4, 7).tolist()
    paths = [train.images.paths[i] for i, _ in plan.batch(0)[1]]
    assert paths[1] == train.images.paths[n - 1 - train.images.paths.index(paths[0])]


# ---- the losses on the mined step --------------------------------------------------------------------------------


def test_triplet_on_mined_tuples_equals_the_authors_trainer():
    """trainer_gsv-cities.py L158-165: for each anchor, TripletMarginLoss(√0.2, p=2, reduction='sum') over its one
    positive and 5 negatives, summed, divided by (5 models · 1 · 5 · 10)."""
    g = torch.Generator().manual_seed(0)
    anchors = 24
    desc = F.normalize(torch.randn(anchors * 7, 64, generator=g), dim=1)
    lat = torch.randn(anchors * 7, 4, 3, 3, generator=g)
    triplets = torch.arange(anchors * 7).view(anchors, 7)
    expr, params = paper_weighting("triplet", {})
    _, terms = build_loss(expr, params)(DistillBatch(lat, lat, desc, desc, triplets=triplets))
    criterion = torch.nn.TripletMarginLoss(margin=0.2**0.5, p=2, reduction="sum")
    theirs = torch.zeros(())
    for q, p, *negs in desc.view(anchors, 7, -1):
        for n in negs:
            theirs = theirs + criterion(q, p, n)
    theirs = theirs / (5 * 1 * 5 * 10)
    assert float(terms["triplet"]) * 0.2 == pytest.approx(float(theirs), rel=1e-4)


def test_ickd_and_mse_on_the_168_image_step_equal_the_authors():
    """loss_distill.py over the whole step (no rescaling at 168 images); MSELoss · 5 models · 100."""
    g = torch.Generator().manual_seed(1)
    s_lat, t_lat = torch.randn(168, 8, 3, 4, generator=g), torch.randn(168, 8, 3, 4, generator=g)
    s, t = F.normalize(torch.randn(168, 32, generator=g), dim=1), F.normalize(torch.randn(168, 32, generator=g), dim=1)
    expr, params = paper_weighting("ickd+mse", {})
    total, terms = build_loss(expr, params)(DistillBatch(s_lat, t_lat, s, t))

    def gram(f):
        x = F.normalize(f.flatten(2), dim=2)
        return F.normalize(x @ x.transpose(1, 2), dim=2)

    ickd = (gram(s_lat) - gram(t_lat)).pow(2).sum().sqrt() / 1000
    mse = torch.nn.MSELoss()(s, t) * 5 * 100
    assert float(total) == pytest.approx(float(ickd + mse), rel=1e-5)


# ---- batch norm, TF32 --------------------------------------------------------------------------------------------


def test_bn_scope_all_lets_statistics_drift_in_frozen_layers_too():
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        from loqi_core import build_model

        model = build_model("tiny", weights="random", plugins=plugins)
        prefixes = ["encoder.3", "encoder.4", "encoder.6", "aggregator"]  # encoder.1 (the first BN) is frozen
        set_train_modes(model, prefixes, freeze_bn=False, dropout=True, bn_scope="all")
        assert model.encoder[1].training and model.encoder[4].training
        set_train_modes(model, prefixes, freeze_bn=False, dropout=True, bn_scope="trainable")
        assert not model.encoder[1].training and model.encoder[4].training
        set_train_modes(model, prefixes, freeze_bn=True, dropout=True, bn_scope="all")
        assert not model.encoder[1].training and not model.encoder[4].training


def _tiny_run(tmp_path, **distill):
    from loqi_core.config import RunConfig
    from loqi_core.training.engine import distill as run_distill

    root = write_gsv_cities(tmp_path / "gsv", cities=("OSL", "PRG", "TRT"), places=3, size=(32, 32))
    cfg = {"model": {"method": "tiny", "weights": "random", "encoder_params": {"channels": 8}}, "degrade": "jpeg10",
           "device": "cpu", "protocol": "paper", "eval": {"cache_dir": str(tmp_path / "cache"), "num_workers": 0},
           "distill": {"train": f"gsv-cities:{root}?cities=[OSL, PRG, TRT]", "num_workers": 0, "max_steps": 2,
                       "tensorboard": False, "lr": 1e-3, "places_per_batch": 2, "images_per_place": 2,
                       "view_size": "native", "augment": False, "mine": True, "freeze_bn": False, **distill}}  # fmt: skip
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        out = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        final = run_distill(RunConfig.model_validate(cfg), out, plugins=plugins)
    return out, load_file(str(final / "model.safetensors"))


def test_the_authors_bn_drift_reaches_the_first_frozen_layer(tmp_path):
    from loqi_core import build_model

    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        initial = build_model("tiny", weights="random", encoder_params={"channels": 8}, plugins=plugins).state_dict()
    key = "encoder.1.running_mean"  # the batch norm of the frozen first convolution
    _, whole = _tiny_run(tmp_path, bn_scope="all")
    _, trainable = _tiny_run(tmp_path, bn_scope="trainable")
    assert not torch.equal(whole[key], initial[key])
    assert torch.equal(trainable[key], initial[key])


def test_training_runs_with_tf32_on_and_restores_it(tmp_path, monkeypatch):
    from loqi_core.training.engine import _Trainer

    seen = []
    step = _Trainer._step

    def recording_step(self, batch):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return step(self, batch)

    monkeypatch.setattr(_Trainer, "_step", recording_step)
    before = torch.backends.cuda.matmul.allow_tf32
    out, _ = _tiny_run(tmp_path, tf32=True, bn_scope="all")
    assert seen == [(True, True)] * 2 and torch.backends.cuda.matmul.allow_tf32 == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tf32"] and summary["mined"] and summary["images_per_step"] == 2 * 2 * 7
    assert summary["view_size"] == "native" and summary["bn_scope"] == "all"
    assert "mined 36 images of gsv-cities with the teacher: 36 anchors" in (out / "run.log").read_text()


# ---- the finetune baseline --------------------------------------------------------------------------------------


def test_finetune_uses_each_methods_own_published_loss_on_place_batches(tmp_path):
    """NetVLAD: pytorch-NetVlad's triplet (margin √0.1, 10 hardest negatives beyond 25 m); MixVPR, SALAD, CricaVPR
    (trained on GSV-Cities): multi-similarity. The finetune trains on place batches, not mined tuples."""
    plugins = get_plugins()
    for method, expr in (("netvlad", "triplet"), ("mixvpr", "multisimilarity"), ("salad", "multisimilarity"),
                         ("cricavpr", "multisimilarity")):  # fmt: skip
        config = paper_config(method)
        loss = training_loss(config, "finetune", encoder_spec(config, plugins), plugins)
        assert loss.expression.endswith(expr), (method, loss.expression)
    netvlad = paper_config("netvlad")
    term = training_loss(netvlad, "finetune", encoder_spec(netvlad, plugins), plugins).terms[0][2]
    assert (term.params.margin, term.params.negatives, term.params.negative_mining) == (0.1**0.5, 10, "hardest")
    assert term.params.negative_min_distance_m == 25.0
    distill_triplet = training_loss(netvlad.model_copy(update={"distill": netvlad.distill.model_copy(
        update={"loss": "triplet"})}), "distill", encoder_spec(netvlad, plugins), plugins).terms[0][2]  # fmt: skip
    assert distill_triplet.params.margin == pytest.approx(0.2**0.5)  # the distillation keeps the authors' margin
    train = _tiny_gsv(tmp_path)
    spec = encoder_spec(netvlad, plugins)
    _, plan, _ = build_training_data(netvlad, training_loss(netvlad, "finetune", spec, plugins), spec, plugins,
                                     train=train, mode="finetune")  # fmt: skip
    assert plan.mined is None and plan.images_per_step == 24


# ---- Pitts30k-val ------------------------------------------------------------------------------------------------


def test_pitts30k_val_split_reads_the_authors_validation_set(tmp_path):
    from loqi_core.data.datasets import ProtocolMismatchWarning

    write_split(tmp_path / "pitts30k", "val", places=5)
    with pytest.warns(ProtocolMismatchWarning, match="database: expected 10000, found 5; queries: expected 7608"):
        val = load_dataset("pitts30k?split=val", "test", root=tmp_path)
    assert len(val.database) == 5 and len(val.queries) == 5
    assert all("/images/val/" in str(p) for p in [*val.database.paths, *val.queries.paths])
    gt = val.ground_truth(25.0)
    assert [list(g) for g in gt] == [[k] for k in range(5)]
    assert math.isclose(val.queries.positions[0][1], 4477000.0)


# ---- CricaVPR's test batches -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_seeded_shuffle_regroups_the_test_batches_and_nothing_else(tmp_path):
    """The authors' CricaVPR batches came from hash-randomised set() order; loqi keeps its own (sorted) grouping and
    offers ``shuffle_seed``: same seed, same order; ground truth follows; a batch-independent model's recall is
    unchanged, CricaVPR's descriptors change with the images that share its batch."""
    from loqi_core import build_model
    from loqi_core.config import EvalConfig
    from loqi_core.evaluation.engine import evaluate

    root = write_split(tmp_path / "msls", "test", places=8, size=(60, 80))
    plain = load_dataset(f"msls:{root}", "test")
    mixed = load_dataset(f"msls:{root}?shuffle_seed=3", "test")
    again = load_dataset(f"msls:{root}?shuffle_seed=3", "test")
    assert sorted(mixed.database.paths) == plain.database.paths and mixed.database.paths != plain.database.paths
    assert mixed.queries.paths == again.queries.paths
    for images in (mixed.database, mixed.queries):
        for path, (east, _) in zip(images.paths, images.positions):
            assert path.name.startswith(f"@{east:.2f}@")
    assert any("random order of seed 3" in n for n in mixed.notes)
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        torch.manual_seed(0)
        tiny = build_model("tiny", weights="random", plugins=plugins)
        kw = dict(device="cpu", cache=EvalCache(tmp_path / "cache"), plugins=plugins)
        assert evaluate(tiny, plain, **kw).recalls == evaluate(tiny, mixed, **kw).recalls
    torch.manual_seed(0)
    crica = build_model("cricavpr", weights="random", aggregator_params={"group_size": 0}, protocol="paper")
    ev = EvalConfig(batch_size=4, num_workers=0, cache=False)
    a = evaluate(crica, plain, config=ev, device="cpu", cache=EvalCache(enabled=False))
    b = evaluate(crica, mixed, config=ev, device="cpu", cache=EvalCache(enabled=False))
    first = mixed.database.paths.index(plain.database.paths[0])
    assert not np.allclose(a.database_descriptors[0], b.database_descriptors[first], atol=1e-5)
