"""Conformance test bases. Subclass one, set the class attributes, and pytest runs the checks.

Each base checks the contract the engines rely on: shapes, dtypes, determinism, device and dtype moves,
params validation and error messages.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import pytest

from loqi_core.errors import ConfigError, LoqiError, UnknownNameError
from loqi_core.hooks.manager import get_plugins
from loqi_core.testing.helpers import random_images, random_state_dict


class MethodTests:
    """For a method plugin (encoder + aggregator registered under one name)."""

    method: ClassVar[str]
    encoder_params: ClassVar[dict[str, Any]] = {}
    aggregator_params: ClassVar[dict[str, Any]] = {}
    image_size: ClassVar[tuple[int, int]] = (64, 64)
    descriptor_dim: ClassVar[int | None] = None
    """Expected descriptor size with the params above (None: not checked)."""
    batch_independent: ClassVar[bool] = True
    """False for methods whose descriptors depend on the rest of the batch (CricaVPR's cross-image encoder)."""
    official_keys: ClassVar[str | Path | None] = None
    """JSON fixture {key: shape} of the official checkpoint; random values must load through the weights' convert."""
    official_variant: ClassVar[str] = "official"

    def build(self, **kw: Any):
        from loqi_core.models.model import build_model

        kw.setdefault("encoder_params", dict(self.encoder_params))
        kw.setdefault("aggregator_params", dict(self.aggregator_params))
        kw.setdefault("weights", "random")
        kw.setdefault("image_size", self.image_size)
        return build_model(self.method, **kw).eval()

    def inputs(self, model, n: int = 2, seed: int = 0):
        return model.prepare(random_images(n, *self.image_size, seed=seed))

    def test_registered_as_method(self):
        assert self.method in get_plugins().methods()

    def test_shapes_and_l2_normalised(self):
        import torch

        model = self.build()
        with torch.no_grad():
            latent, desc = model(self.inputs(model))
        assert latent.dim() == 4 and latent.shape[0] == 2
        assert latent.shape[1] == model.encoder.out_channels
        assert desc.dim() == 2 and desc.shape[0] == 2
        if self.descriptor_dim is not None:
            assert desc.shape[1] == self.descriptor_dim
        assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-4)
        assert torch.isfinite(desc).all() and torch.isfinite(latent).all()

    def test_deterministic_in_eval_mode(self):
        import torch

        torch.manual_seed(0)
        model = self.build()
        x = self.inputs(model)
        with torch.no_grad():
            a, b = model(x)[1], model(x)[1]
        assert torch.equal(a, b)

    def test_batch_independence(self):
        import torch

        if not self.batch_independent:
            pytest.skip("descriptors depend on the batch by design")
        model = self.build()
        x = self.inputs(model, n=3)
        with torch.no_grad():
            together = model(x)[1]
            alone = model(x[:1])[1]
        assert torch.allclose(together[:1], alone, atol=1e-4)

    def test_dtype_move_reaches_every_tensor(self):
        """``.to()`` must move everything: plain-tensor attributes that stay behind break GPU runs."""
        import torch

        model = self.build().to(torch.float64)
        with torch.no_grad():
            latent, desc = model(self.inputs(model).double())
        assert latent.dtype == torch.float64 and desc.dtype == torch.float64

    def test_gradients_reach_trainable_layers(self):
        model = self.build().train()
        spec = get_plugins().method(self.method)[0]
        names = [n for n, _ in model.named_parameters()]
        for prefix in spec.trainable:
            assert any(n.startswith(prefix) for n in names), f"trainable prefix {prefix!r} matches no parameter"
        latent, desc = model(self.inputs(model))
        (desc.sum() + latent.mean()).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_default_loss_is_registered(self):
        from loqi_core.losses.expression import build_loss

        spec = get_plugins().method(self.method)[0]
        build_loss(spec.default_loss)

    def test_unknown_param_is_reported(self):
        with pytest.raises(ConfigError, match="encoder_params"):
            self.build(encoder_params={**self.encoder_params, "no_such_param": 1})

    def test_official_state_dict_loads_strict(self, tmp_path):
        import torch

        if self.official_keys is None:
            pytest.skip("no official key fixture for this method")
        spec = get_plugins().method(self.method)[0]
        variant = next(w for w in spec.weights if w.name == self.official_variant)
        path = tmp_path / "official.pth"
        torch.save(random_state_dict(self.official_keys), path)
        model = self.build(weights=str(path))
        assert model.info["weights"] == str(path)
        if variant.scope == "model":
            with torch.no_grad():
                assert model(self.inputs(model))[1].shape[0] == 2


class AggregatorTests:
    """For a stand-alone aggregator: random feature maps in, an L2-normalised descriptor out."""

    aggregator: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    in_channels: ClassVar[int] = 32
    feature_size: ClassVar[tuple[int, int]] = (7, 7)
    descriptor_dim: ClassVar[int | None] = None

    def build(self):
        spec = get_plugins().aggregator(self.aggregator)
        return spec.factory(spec.params(**self.params), in_channels=self.in_channels).eval()

    def features(self, n: int = 2):
        import torch

        return torch.randn(n, self.in_channels, *self.feature_size, generator=torch.Generator().manual_seed(0))

    def test_descriptor(self):
        import torch

        with torch.no_grad():
            desc = self.build()(self.features())
        assert desc.shape[0] == 2 and desc.dim() == 2
        if self.descriptor_dim is not None:
            assert desc.shape[1] == self.descriptor_dim
        assert torch.allclose(desc.norm(dim=1), torch.ones(2), atol=1e-4)

    def test_unknown_param_rejected(self):
        spec = get_plugins().aggregator(self.aggregator)
        with pytest.raises(Exception):
            spec.params(**self.params, no_such_param=1)


class DegradationTests:
    """For a degradation plugin: give valid specs, invalid specs, and an image size."""

    specs: ClassVar[list[str]]
    bad_specs: ClassVar[list[str]] = []
    image_size: ClassVar[tuple[int, int]] = (48, 64)
    num_images: ClassVar[int] = 3

    def _images(self):
        return random_images(self.num_images, *self.image_size, seed=1)

    def _apply(self, spec: str, seed: int = 0):
        from loqi_core.degrade.grammar import parse_degradation

        return parse_degradation(spec)(self._images(), seed=seed)

    def test_uint8_out_one_per_image(self):
        import torch

        for spec in self.specs:
            out = self._apply(spec)
            assert len(out.images) == self.num_images, spec
            for img in out.images:
                assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3, spec
            if out.nbytes is not None:
                assert len(out.nbytes) == self.num_images and all(b > 0 for b in out.nbytes), spec

    def test_deterministic_given_seed(self):
        import torch

        for spec in self.specs:
            a, b = self._apply(spec, seed=3), self._apply(spec, seed=3)
            assert all(torch.equal(x, y) for x, y in zip(a.images, b.images)), spec

    def test_actually_degrades(self):
        for spec in self.specs:
            clean = self._images()
            out = self._apply(spec)
            changed = any(o.shape != c.shape or (o.int() - c.int()).abs().sum() > 0 for o, c in zip(out.images, clean))
            assert changed, f"{spec} returned the clean images"

    def test_bad_specs_rejected_with_reason(self):
        from loqi_core.degrade.grammar import parse_degradation

        for spec in self.bad_specs:
            with pytest.raises(LoqiError) as info:
                parse_degradation(spec)
            assert spec in str(info.value)

    def test_unknown_spec_suggests_forms(self):
        from loqi_core.degrade.grammar import parse_degradation

        with pytest.raises(UnknownNameError, match="Known forms"):
            parse_degradation("definitely-not-a-degradation7")


class LossTests:
    """For a loss plugin: builds a batch of random latents and descriptors and checks the contract."""

    loss: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    zero_when_equal: ClassVar[bool] = True
    """A distillation loss is zero when the student matches the teacher exactly."""

    def batch(self, equal: bool = False):
        import torch
        import torch.nn.functional as F

        from loqi_core.losses.terms import DistillBatch

        g = torch.Generator().manual_seed(0)
        t_lat = torch.randn(8, 16, 5, 5, generator=g)
        t_desc = F.normalize(torch.randn(8, 32, generator=g), dim=1)
        s_lat = t_lat.clone() if equal else torch.randn(8, 16, 4, 6, generator=g)
        s_desc = t_desc.clone() if equal else F.normalize(torch.randn(8, 32, generator=g), dim=1)
        s_lat.requires_grad_(True)
        s_desc.requires_grad_(True)
        ids = torch.arange(4).repeat_interleave(2)
        positions = torch.stack([ids.float() * 100, torch.zeros(8)], 1)
        return DistillBatch(s_lat, t_lat, s_desc, t_desc, ids, positions)

    def build(self):
        from loqi_core.losses.expression import build_loss

        return build_loss(self.loss, {self.loss: dict(self.params)} if self.params else None)

    def test_scalar_and_finite(self):
        import torch

        total, terms = self.build()(self.batch())
        assert total.dim() == 0 and torch.isfinite(total)
        assert set(terms) == {self.loss}

    def test_gradients_reach_student_only(self):
        b = self.batch()
        total, _ = self.build()(b)
        total.backward()
        assert b.student_desc.grad is not None or b.student_latent.grad is not None
        assert not b.teacher_desc.requires_grad and not b.teacher_latent.requires_grad

    def test_zero_when_student_equals_teacher(self):
        if not self.zero_when_equal:
            pytest.skip("not a distillation term")
        total, _ = self.build()(self.batch(equal=True))
        assert abs(float(total.detach())) < 1e-5

    def test_unknown_param_reported(self):
        from loqi_core.losses.expression import build_loss

        with pytest.raises(ConfigError, match=f"loss_params.{self.loss}"):
            build_loss(self.loss, {self.loss: {"no_such_param": 1}})


class DatasetTests(abc.ABC):
    """For a dataset plugin: ``make(tmp_path)`` writes a small copy in the exact on-disk format."""

    dataset: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def make(self, root: Path) -> Path:
        """Write a small dataset under ``root`` and return its root folder."""

    def _params(self, root: Path):
        spec = get_plugins().dataset(self.dataset)
        return spec, spec.params(**{**self.params, "root": root})

    def test_test_set_reads_back(self, tmp_path):
        from loqi_core.data.images import read_image

        spec, params = self._params(self.make(tmp_path))
        if spec.test is None:
            pytest.skip("no test split")
        test = spec.test(params)
        assert len(test.database) > 0 and len(test.queries) > 0
        gt = test.ground_truth(25.0)
        assert len(gt) == len(test.queries)
        assert all(((g >= 0) & (g < len(test.database))).all() for g in gt)
        assert any(len(g) > 0 for g in gt), "no query has a positive within 25 m: the bounds check above saw nothing"
        assert read_image(test.queries.paths[0]).dtype.is_floating_point is False
        for images in (test.database, test.queries):
            if images.sequences is not None:
                flat = sorted(i for s in images.sequences for i in s)
                assert flat == sorted(set(flat)) and all(0 <= i < len(images) for i in flat)

    def test_train_set_reads_back(self, tmp_path):
        spec, params = self._params(self.make(tmp_path))
        if spec.train is None:
            pytest.skip("no train split")
        train = spec.train(params)
        assert len(train.images) > 0
        if train.place_ids is not None:
            assert len(train.place_ids) == len(train.images)

    def test_missing_root_is_named(self, tmp_path):
        spec, params = self._params(tmp_path / "does-not-exist")
        loader = spec.test or spec.train
        with pytest.raises(LoqiError, match="does-not-exist"):
            loader(params)
