"""Conformance test bases. Subclass one, set the class attributes, and pytest runs the checks.

Each base checks the contract the engines rely on: shapes, dtypes, determinism, device and dtype moves, gradients,
params validation, error messages, and a plugin module light enough for every ``loqi`` command to import. A failure
says what the plugin did, what was expected and which spec field to fix. docs/plugin-guide.md lists every check and
every option.
"""

from __future__ import annotations

import abc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from loqi_core.errors import ConfigError, LoqiError, UnknownNameError
from loqi_core.hooks.manager import HEAVY_MODULES, get_plugins
from loqi_core.hooks.registry import Provider
from loqi_core.testing.helpers import random_images, random_state_dict

_IMPORT_PROBE = """
import importlib, json, sys, time
import loqi_core.plugin
before = set(sys.modules)
start = time.perf_counter()
try:
    importlib.import_module(sys.argv[1])
except ModuleNotFoundError as exc:
    if exc.name != sys.argv[1]:
        raise
    print(json.dumps({"importable": False}))
    raise SystemExit(0)
seconds = time.perf_counter() - start
heavy = [m for m in sys.argv[2:] if m in sys.modules and m not in before]
print(json.dumps({"importable": True, "seconds": seconds, "heavy": heavy}))
"""
_import_reports: dict[str, dict[str, Any]] = {}


def import_report(module: str) -> dict[str, Any]:
    """How importing ``module`` goes in a fresh interpreter (after ``loqi_core.plugin``): whether it is importable,
    the seconds it took and the ``HEAVY_MODULES`` it pulled in. Run once per module and process."""
    if module not in _import_reports:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, module, *HEAVY_MODULES], capture_output=True,
                              text=True, env=env, timeout=300)  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise AssertionError(f'importing plugin module "{module}" in a fresh interpreter failed: {last}')
        _import_reports[module] = json.loads(done.stdout.strip().splitlines()[-1])
    return _import_reports[module]


class _PluginModuleTests:
    """The check every base shares: the plugin module imports no heavy library (``loqi --help`` imports it)."""

    def providers(self) -> list[Provider]:
        """The plugins that provide what this test class checks."""
        raise NotImplementedError

    def test_plugin_module_imports_no_heavy_library(self):
        plugins = get_plugins()
        for provider in self.providers():
            info = plugins.info.get(provider.plugin)
            if info is None or info.source is None:
                continue
            report = import_report(info.source)
            if not report["importable"]:
                pytest.skip(f'"{info.source}" is not importable by name (a plugin defined inside a test module)')
            assert not report["heavy"], (
                f'importing {provider}\'s module "{info.source}" imports {", ".join(report["heavy"])} '
                f"({report['seconds']:.1f} s): `loqi --help` and every other command import every plugin, so each "
                "would pay for it. Import heavy libraries inside the factories (EncoderSpec.factory, "
                "AggregatorSpec.factory, ...) or in a module only they import"
            )


class MethodTests(_PluginModuleTests):
    """For a method plugin (encoder + aggregator registered under one name)."""

    method: ClassVar[str]
    """The method name (``--method``) under test."""
    encoder_params: ClassVar[dict[str, Any]] = {}
    """Params for the encoder (small ones keep the tests fast on a CPU)."""
    aggregator_params: ClassVar[dict[str, Any]] = {}
    """Params for the aggregator."""
    image_size: ClassVar[tuple[int, int]] = (64, 64)
    """(height, width) the model is built for and fed (overrides the method's preprocessing size)."""
    descriptor_dim: ClassVar[int | None] = None
    """Expected descriptor size with the params above (None: not checked)."""
    batch_independent: ClassVar[bool] = True
    """False for methods whose descriptors depend on the rest of the batch (CricaVPR's cross-image encoder)."""
    official_keys: ClassVar[dict[str, list[int]] | str | Path | None] = None
    """{key: shape} of the official checkpoint (a dict or a JSON file); random values with these keys must load
    strictly through the official variant's ``convert``."""
    official_variant: ClassVar[str] = "official"
    """The ``WeightsSpec.name`` whose ``convert`` and ``scope`` the official keys go through."""

    def build(self, **kw: Any):
        from loqi_core.models.model import build_model

        kw.setdefault("encoder_params", dict(self.encoder_params))
        kw.setdefault("aggregator_params", dict(self.aggregator_params))
        kw.setdefault("weights", "random")
        kw.setdefault("image_size", self.image_size)
        return build_model(self.method, **kw).eval()

    def inputs(self, model, n: int = 2, seed: int = 0):
        return model.prepare(random_images(n, *self.image_size, seed=seed))

    def providers(self) -> list[Provider]:
        plugins = get_plugins()
        enc, agg = plugins.method(self.method)
        return [plugins.encoders.provider(enc.name), plugins.aggregators.provider(agg.name)]

    def test_registered_as_method(self):
        methods = get_plugins().methods()
        assert self.method in methods, (
            f'no method "{self.method}" is registered (methods: {", ".join(sorted(methods)) or "none"}): register an '
            f'EncoderSpec named "{self.method}" in loqi_register_encoders and an AggregatorSpec of the same name in '
            "loqi_register_aggregators (or name another aggregator in EncoderSpec.default_aggregator)"
        )

    def test_shapes_and_l2_normalised(self):
        import torch

        model = self.build()
        with torch.no_grad():
            latent, desc = model(self.inputs(model))
        enc, agg = model.info["encoder"], model.info["aggregator"]
        assert latent.dim() == 4 and latent.shape[0] == 2, (
            f'encoder "{enc}" returned a latent of shape {tuple(latent.shape)} for 2 images; expected B×C×h×w '
            "(the module EncoderSpec.factory returns must output the latent map, or a tuple led by it)"
        )
        assert latent.shape[1] == model.encoder.out_channels, (
            f'encoder "{enc}" declares out_channels={model.encoder.out_channels} but returns {latent.shape[1]} '
            "channels: set out_channels on the module EncoderSpec.factory returns"
        )
        assert desc.dim() == 2 and desc.shape[0] == 2, (
            f'aggregator "{agg}" returned a descriptor of shape {tuple(desc.shape)} for 2 images; expected B×D '
            "(the module AggregatorSpec.factory returns)"
        )
        if self.descriptor_dim is not None:
            assert desc.shape[1] == self.descriptor_dim, (
                f"descriptors have {desc.shape[1]} dimensions with aggregator_params={self.aggregator_params}; the "
                f"test's descriptor_dim expects {self.descriptor_dim}"
            )
        assert torch.isfinite(latent).all() and torch.isfinite(desc).all(), (
            f'non-finite values in the latent ({(~torch.isfinite(latent)).sum()}) or the descriptors '
            f"({(~torch.isfinite(desc)).sum()}) of two random images"
        )
        norms = desc.norm(dim=1)
        assert torch.allclose(norms, torch.ones(2), atol=1e-4), (
            f'aggregator "{agg}" returned descriptors of L2 norm {[round(float(n), 4) for n in norms]}; they must be '
            "unit vectors: end its forward with torch.nn.functional.normalize(x, dim=1)"
        )

    def test_deterministic_in_eval_mode(self):
        import torch

        torch.manual_seed(0)
        model = self.build()
        x = self.inputs(model)
        with torch.no_grad():
            a, b = model(x)[1], model(x)[1]
        assert torch.equal(a, b), (
            f"two eval-mode passes over the same images differ by up to {float((a - b).abs().max()):.3g}: a forward in "
            "eval mode must be deterministic (no dropout or random sampling outside model.training)"
        )

    def test_batch_independence(self):
        import torch

        if not self.batch_independent:
            pytest.skip("descriptors depend on the batch by design")
        model = self.build()
        x = self.inputs(model, n=3)
        with torch.no_grad():
            together = model(x)[1]
            alone = model(x[:1])[1]
        assert torch.allclose(together[:1], alone, atol=1e-4), (
            f"the descriptor of an image changes by up to {float((together[:1] - alone).abs().max()):.3g} when other "
            "images share its batch: look for statistics over the batch dimension in eval mode, or set "
            "batch_independent = False in the test if the method mixes images by design (CricaVPR)"
        )

    def test_dtype_move_reaches_every_tensor(self):
        """``.to()`` must move everything: plain-tensor attributes that stay behind break GPU runs."""
        import torch

        model = self.build().to(torch.float64)
        try:
            with torch.no_grad():
                latent, desc = model(self.inputs(model).double())
        except RuntimeError as exc:
            raise AssertionError(
                f"after model.to(torch.float64) the forward fails ({str(exc)[:200]}): a plain tensor attribute stayed "
                "behind; register it with self.register_buffer(...) so .to() moves it"
            ) from None
        assert latent.dtype == torch.float64 and desc.dtype == torch.float64, (
            f"after model.to(torch.float64) the latent is {latent.dtype} and the descriptor {desc.dtype}: a tensor "
            "created in forward with a fixed dtype, or a plain tensor attribute (use register_buffer), stays float32"
        )

    def test_gradients_reach_trainable_layers(self):
        model = self.build().train()
        spec = get_plugins().method(self.method)[0]
        names = [n for n, _ in model.named_parameters()]
        for prefix in spec.trainable:
            assert any(n.startswith(prefix) for n in names), (
                f"EncoderSpec.trainable prefix {prefix!r} matches no parameter of the model; names start with "
                f"{sorted({n.split('.')[0] + '.' + n.split('.')[1] for n in names if '.' in n})[:8]}"
            )
        latent, desc = model(self.inputs(model))
        (desc.sum() + latent.mean()).backward()
        params = dict(model.named_parameters())
        for prefix in spec.trainable or ("",):
            reached = [n for n, p in params.items() if n.startswith(prefix) and p.grad is not None and p.grad.abs().sum() > 0]
            assert reached, (
                f"no parameter under {prefix or 'the model'!r} receives a gradient from the latent and the descriptor: "
                "distillation could not train it (a detach or torch.no_grad in forward?); fix the forward or "
                "EncoderSpec.trainable"
            )

    def test_default_loss_is_registered(self):
        from loqi_core.losses.expression import build_loss

        spec = get_plugins().method(self.method)[0]
        try:
            build_loss(spec.default_loss)
        except LoqiError as exc:
            raise AssertionError(f"EncoderSpec.default_loss={spec.default_loss!r} does not build: {exc}") from None

    def test_unknown_param_is_reported(self):
        try:
            self.build(encoder_params={**self.encoder_params, "no_such_param": 1})
        except ConfigError as exc:
            assert "encoder_params" in str(exc), f"the error for an unknown encoder param does not name the field: {exc}"
        else:
            raise AssertionError(
                "an unknown encoder param (no_such_param=1) was accepted: EncoderSpec.params must subclass "
                "loqi_core.plugin.Params, which forbids unknown keys"
            )

    def test_official_state_dict_loads_strict(self, tmp_path):
        import torch

        if self.official_keys is None:
            pytest.skip("no official key fixture for this method")
        spec = get_plugins().method(self.method)[0]
        variant = next((w for w in spec.weights if w.name == self.official_variant), None)
        assert variant is not None, (
            f"official_variant={self.official_variant!r} names no WeightsSpec of method {self.method!r} (declared: "
            f"{[w.name for w in spec.weights]}); set official_variant or add that WeightsSpec to EncoderSpec.weights"
        )
        path = tmp_path / "official.pth"
        torch.save(random_state_dict(self.official_keys), path)
        try:
            model = self.build(weights=str(path))
        except LoqiError as exc:
            target = "the encoder's own keys (no encoder. prefix)" if variant.scope == "encoder" else "encoder.* and aggregator.* keys"
            raise AssertionError(
                f"the official keys do not load through WeightsSpec {variant.name!r} (scope={variant.scope!r}): {exc}. "
                f"Its convert must map them onto {target}"
            ) from None
        assert model.info["weights"] == str(path), f"build_model(weights=file) recorded {model.info['weights']!r}"
        if variant.scope == "model":
            with torch.no_grad():
                desc = model(self.inputs(model))[1]
            assert desc.shape[0] == 2, f"with the official weights loaded, the descriptors have shape {tuple(desc.shape)}"


class AggregatorTests(_PluginModuleTests):
    """For a stand-alone aggregator: random feature maps in, an L2-normalised descriptor out."""

    aggregator: ClassVar[str]
    """The aggregator name (``--aggregator``) under test."""
    params: ClassVar[dict[str, Any]] = {}
    """Params for the aggregator."""
    in_channels: ClassVar[int] = 32
    """Channel count of the random feature maps (the ``in_channels`` its factory receives)."""
    feature_size: ClassVar[tuple[int, int]] = (7, 7)
    """(h, w) of the random feature maps."""
    descriptor_dim: ClassVar[int | None] = None
    """Expected descriptor size (None: not checked)."""

    def build(self):
        spec = get_plugins().aggregator(self.aggregator)
        return spec.factory(spec.params(**self.params), in_channels=self.in_channels).eval()

    def features(self, n: int = 2):
        import torch

        return torch.randn(n, self.in_channels, *self.feature_size, generator=torch.Generator().manual_seed(0))

    def providers(self) -> list[Provider]:
        return [get_plugins().aggregators.provider(self.aggregator)]

    def test_descriptor(self):
        import torch

        with torch.no_grad():
            desc = self.build()(self.features())
        assert desc.dim() == 2 and desc.shape[0] == 2, (
            f'aggregator "{self.aggregator}" returned shape {tuple(desc.shape)} for 2 feature maps '
            f"{self.in_channels}×{self.feature_size}; expected B×D (the module AggregatorSpec.factory returns)"
        )
        if self.descriptor_dim is not None:
            assert desc.shape[1] == self.descriptor_dim, (
                f"descriptors have {desc.shape[1]} dimensions with params={self.params}; the test's descriptor_dim "
                f"expects {self.descriptor_dim}"
            )
        norms = desc.norm(dim=1)
        assert torch.isfinite(desc).all() and torch.allclose(norms, torch.ones(2), atol=1e-4), (
            f'aggregator "{self.aggregator}" returned descriptors of L2 norm {[round(float(n), 4) for n in norms]}; '
            "they must be finite unit vectors: end its forward with torch.nn.functional.normalize(x, dim=1)"
        )

    def test_unknown_param_rejected(self):
        from pydantic import ValidationError

        spec = get_plugins().aggregator(self.aggregator)
        try:
            spec.params(**self.params, no_such_param=1)
        except ValidationError:
            return
        raise AssertionError(
            "an unknown aggregator param (no_such_param=1) was accepted: AggregatorSpec.params must subclass "
            "loqi_core.plugin.Params, which forbids unknown keys"
        )


class DegradationTests(_PluginModuleTests):
    """For a degradation plugin: give valid specs, invalid specs, and an image size."""

    specs: ClassVar[list[str]]
    """Valid specs of the plugin's grammar (chains with ``+`` too); each must degrade and be deterministic."""
    bad_specs: ClassVar[list[str]] = []
    """Specs that must be refused with a LoqiError naming the spec (out-of-range values)."""
    image_size: ClassVar[tuple[int, int]] = (48, 64)
    """(height, width) of the random test images."""
    num_images: ClassVar[int] = 3
    """How many images each call gets."""

    def _images(self):
        return random_images(self.num_images, *self.image_size, seed=1)

    def _apply(self, spec: str, seed: int = 0):
        from loqi_core.degrade.grammar import parse_degradation

        return parse_degradation(spec)(self._images(), seed=seed)

    def providers(self) -> list[Provider]:
        import re

        found = []
        for _, dspec, provider in get_plugins().degradations.items():
            tokens = [t for spec in self.specs for t in spec.split("+")]
            if any(re.fullmatch(dspec.pattern, t) for t in tokens) and provider not in found:
                found.append(provider)
        return found

    def test_uint8_out_one_per_image(self):
        import torch

        for spec in self.specs:
            out = self._apply(spec)
            assert len(out.images) == self.num_images, (
                f"{spec!r} returned {len(out.images)} images for {self.num_images}: Degradation.__call__ must return one "
                "image per input, in order"
            )
            for img in out.images:
                assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3, (
                    f"{spec!r} returned an image of dtype {img.dtype} and shape {tuple(img.shape)}; expected uint8 3×H×W"
                )
            if out.nbytes is not None:
                assert len(out.nbytes) == self.num_images and all(b > 0 for b in out.nbytes), (
                    f"{spec!r} returned nbytes={out.nbytes}: one positive byte count per image, or None for "
                    "degradations without a bitstream"
                )

    def test_deterministic_given_seed(self):
        import torch

        for spec in self.specs:
            a, b = self._apply(spec, seed=3), self._apply(spec, seed=3)
            assert all(torch.equal(x, y) for x, y in zip(a.images, b.images)), (
                f"{spec!r} gives other pixels on a second call with the same seed: draw every random choice from "
                "the seed Degradation.__call__ receives (loqi_core.plugin.sample_seed), never from global state"
            )

    def test_actually_degrades(self):
        for spec in self.specs:
            clean = self._images()
            out = self._apply(spec)
            changed = any(o.shape != c.shape or (o.int() - c.int()).abs().sum() > 0 for o, c in zip(out.images, clean))
            assert changed, f"{spec!r} returned the clean images unchanged: does its factory read the params?"

    def test_bad_specs_rejected_with_reason(self):
        from loqi_core.degrade.grammar import parse_degradation

        for spec in self.bad_specs:
            try:
                parse_degradation(spec)
            except LoqiError as exc:
                assert spec in str(exc), f"the error for the bad spec {spec!r} does not name it: {exc}"
            else:
                raise AssertionError(
                    f"the bad spec {spec!r} was accepted: constrain DegradationSpec.params with pydantic Field bounds "
                    "(ge=, le=) so the grammar refuses it"
                )

    def test_unknown_spec_suggests_forms(self):
        from loqi_core.degrade.grammar import parse_degradation

        try:
            parse_degradation("definitely-not-a-degradation7")
        except UnknownNameError as exc:
            assert "Known forms" in str(exc), f"the error for an unknown spec lists no known forms: {exc}"
        else:
            raise AssertionError(
                'the spec "definitely-not-a-degradation7" was accepted: a DegradationSpec.pattern matches it; anchor '
                "the pattern on the family's name (jpeg(?P<quality>\\d+))"
            )


class LossTests(_PluginModuleTests):
    """For a loss plugin: builds batches of random latents and descriptors and checks the contract."""

    loss: ClassVar[str]
    """The loss name (``--loss``) under test."""
    params: ClassVar[dict[str, Any]] = {}
    """Params for the loss (``distill.loss_params.<name>``)."""
    zero_when_equal: ClassVar[bool] = True
    """A distillation loss is zero when the student matches the teacher exactly, and positive when it does not."""
    uses_teacher: ClassVar[bool] = True
    """The loss reads the teacher's outputs, so another teacher changes it; False for a term that reads only the
    student (triplet, multi-similarity)."""

    def batch(self, *, equal: bool = False, teacher_seed: int = 0, requires_grad: bool = False):
        """Random B=8 outputs: teacher latents 16×5×5 and 32-d descriptors from ``teacher_seed``, a student of its
        own (latents 16×4×6) or, with ``equal``, copies of the teacher's; four places of two images each."""
        import torch
        import torch.nn.functional as F

        from loqi_core.losses.terms import DistillBatch

        g = torch.Generator().manual_seed(1000 + teacher_seed)
        t_lat = torch.randn(8, 16, 5, 5, generator=g)
        t_desc = F.normalize(torch.randn(8, 32, generator=g), dim=1)
        g = torch.Generator().manual_seed(0)
        s_lat = t_lat.clone() if equal else torch.randn(8, 16, 4, 6, generator=g)
        s_desc = t_desc.clone() if equal else F.normalize(torch.randn(8, 32, generator=g), dim=1)
        for t in (s_lat, s_desc) + ((t_lat, t_desc) if requires_grad else ()):
            t.requires_grad_(True)
        ids = torch.arange(4).repeat_interleave(2)
        positions = torch.stack([ids.float() * 100, torch.zeros(8)], 1)
        return DistillBatch(s_lat, t_lat, s_desc, t_desc, ids, positions)

    def build(self):
        from loqi_core.losses.expression import build_loss

        return build_loss(self.loss, {self.loss: dict(self.params)} if self.params else None)

    def value(self, **batch: Any) -> float:
        """The loss on ``self.batch(**batch)``, with torch's generator reset first (losses that sample negatives
        draw the same ones in every call, so two values differ only by the batch)."""
        import torch

        torch.manual_seed(0)
        return float(self.build()(self.batch(**batch))[0].detach())

    def providers(self) -> list[Provider]:
        return [get_plugins().losses.provider(self.loss)]

    def test_scalar_and_finite(self):
        import torch

        total, terms = self.build()(self.batch())
        assert total.dim() == 0 and torch.isfinite(total), (
            f'loss "{self.loss}" returned {total.shape if total.dim() else float(total)}; its factory\'s callable must '
            "return one finite scalar tensor per batch (reduce over the batch: .mean() or .sum())"
        )
        assert set(terms) == {self.loss}, f"terms {sorted(terms)}; expected {{{self.loss!r}}}"

    def test_gradients_reach_student_only(self):
        """Through a teacher whose outputs do require grad: the loss must treat them as a fixed target."""
        b = self.batch(requires_grad=True)
        total, _ = self.build()(b)
        no_student = (
            f'no gradient of loss "{self.loss}" reaches student_latent or student_desc: the student could not learn '
            "from it (a .detach() or torch.no_grad() on the student's side?)"
        )
        assert total.requires_grad, no_student
        total.backward()
        moved = lambda t: t.grad is not None and bool(t.grad.abs().sum() > 0)  # noqa: E731
        assert moved(b.student_desc) or moved(b.student_latent), no_student
        leaked = [name for name in ("teacher_latent", "teacher_desc") if moved(getattr(b, name))]
        assert not leaked, (
            f'loss "{self.loss}" sends gradients into {" and ".join(leaked)}: the teacher is a fixed target; '
            f"use batch.{leaked[0]}.detach() in the loss"
        )

    def test_zero_when_student_equals_teacher(self):
        if not self.zero_when_equal:
            pytest.skip("not a distillation term")
        value = self.value(equal=True)
        assert abs(value) < 1e-5, (
            f'loss "{self.loss}" is {value:.6g} when the student equals the teacher exactly: a distillation loss '
            "measures how far the student is from the teacher, so it must be 0 there (or set zero_when_equal = "
            "False in the test if it is not a distillation term)"
        )

    def test_positive_when_student_differs(self):
        if not self.zero_when_equal:
            pytest.skip("not a distillation term")
        value = self.value()
        assert value > 1e-6, (
            f'loss "{self.loss}" is {value:.6g} for a random student and another random teacher: it must be positive '
            "when they differ. Does it compare the student with itself, or ignore the teacher?"
        )

    def test_changes_when_only_the_teacher_changes(self):
        if not self.uses_teacher:
            pytest.skip("reads only the student")
        one, other = self.value(teacher_seed=0), self.value(teacher_seed=1)
        assert abs(one - other) > 1e-6 * max(1.0, abs(one)), (
            f'loss "{self.loss}" is {one:.6g} for one teacher and {other:.6g} for another, with the same student: it '
            "ignores teacher_latent and teacher_desc. Compare the student with the teacher (or set uses_teacher = "
            "False in the test for a term that reads only the student)"
        )

    def test_unknown_param_reported(self):
        from loqi_core.losses.expression import build_loss

        try:
            build_loss(self.loss, {self.loss: {"no_such_param": 1}})
        except ConfigError as exc:
            assert f"loss_params.{self.loss}" in str(exc), f"the error for an unknown param does not name the field: {exc}"
        else:
            raise AssertionError(
                "an unknown loss param (no_such_param=1) was accepted: LossSpec.params must subclass "
                "loqi_core.plugin.Params, which forbids unknown keys"
            )


class DatasetTests(_PluginModuleTests, abc.ABC):
    """For a dataset plugin: ``make(tmp_path)`` writes a small copy in the exact on-disk format."""

    dataset: ClassVar[str]
    """The dataset name (``--dataset NAME:PATH``) under test."""
    params: ClassVar[dict[str, Any]] = {}
    """Params besides ``root`` (the ``?key=value`` options)."""

    @abc.abstractmethod
    def make(self, root: Path) -> Path:
        """Write a small dataset under ``root`` and return its root folder."""

    def _params(self, root: Path):
        spec = get_plugins().dataset(self.dataset)
        return spec, spec.params(**{**self.params, "root": root})

    def providers(self) -> list[Provider]:
        return [get_plugins().datasets.provider(self.dataset)]

    def test_test_set_reads_back(self, tmp_path):
        from loqi_core.data.images import read_image

        spec, params = self._params(self.make(tmp_path))
        if spec.test is None:
            pytest.skip("no test split")
        test = spec.test(params)
        assert len(test.database) > 0 and len(test.queries) > 0, (
            f"DatasetSpec.test read {len(test.database)} database and {len(test.queries)} query images from the copy "
            "make() wrote: does it look where make() writes?"
        )
        gt = test.ground_truth(25.0)
        assert len(gt) == len(test.queries), f"ground_truth(25.0) has {len(gt)} entries for {len(test.queries)} queries"
        assert all(((g >= 0) & (g < len(test.database))).all() for g in gt), (
            f"ground truth indices outside the database (0..{len(test.database) - 1})"
        )
        assert any(len(g) > 0 for g in gt), "no query has a positive within 25 m: the bounds check above saw nothing"
        first = read_image(test.queries.paths[0])
        assert first.dtype.is_floating_point is False, f"read_image gave {first.dtype} for {test.queries.paths[0]}"
        for what, images in (("database", test.database), ("queries", test.queries)):
            if images.sequences is not None:
                flat = sorted(i for s in images.sequences for i in s)
                assert flat == sorted(set(flat)) and all(0 <= i < len(images) for i in flat), (
                    f"{what}.sequences index an image twice or outside 0..{len(images) - 1}"
                )

    def test_train_set_reads_back(self, tmp_path):
        spec, params = self._params(self.make(tmp_path))
        if spec.train is None:
            pytest.skip("no train split")
        train = spec.train(params)
        assert len(train.images) > 0, "DatasetSpec.train read no images from the copy make() wrote"
        if train.place_ids is not None:
            assert len(train.place_ids) == len(train.images), (
                f"{len(train.place_ids)} place ids for {len(train.images)} training images: one per image"
            )

    def test_missing_root_is_named(self, tmp_path):
        spec, params = self._params(tmp_path / "does-not-exist")
        loader = spec.test or spec.train
        try:
            loader(params)
        except LoqiError as exc:
            assert "does-not-exist" in str(exc), f"the error for a missing root does not name the folder: {exc}"
        else:
            raise AssertionError("a missing dataset root was accepted: raise loqi_core.plugin.DataError naming it")
