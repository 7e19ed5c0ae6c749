"""The conformance kit run on the tiny fixture plugin: what a plugin's own tests look like, and proof the kit bites.

Each ``test_kit_catches_*`` plants one bug a plugin author made (issue #27) in a fixture plugin, runs the kit check
that must catch it, and checks the failure names the fix.
"""

import importlib
import sys
import textwrap
from types import SimpleNamespace

import pytest

from loqi_core.errors import PluginLoadError
from loqi_core.plugin import AggregatorSpec, EncoderSpec, LossSpec, NoParams, hookimpl
from loqi_core.testing import DegradationTests, LossTests, MethodTests, isolated_plugins
from loqi_core.testing.tiny import GeMParams, TinyEncoderParams, _encoder, _gem, tiny_plugin


@pytest.fixture(autouse=True)
def _tiny_registered():
    with isolated_plugins(("tiny", tiny_plugin), entry_points=False):
        yield


class TestTinyMethod(MethodTests):
    method = "tiny"
    image_size = (32, 32)
    descriptor_dim = 16


class TestBlur(DegradationTests):
    specs = ["blur3", "blur3+blur5"]
    bad_specs = ["blur0", "blur99"]


def failure(check) -> str:
    """The message of the AssertionError a kit check raises."""
    with pytest.raises(AssertionError) as info:
        check()
    return str(info.value)


# ---- losses ----------------------------------------------------------------------------------------


def loss_plugin(name: str, loss) -> SimpleNamespace:
    """A plugin registering ``loss`` (a callable on a DistillBatch) as loss ``name``."""
    return SimpleNamespace(loqi_register_losses=hookimpl(lambda register: register(LossSpec(name, lambda p: loss))))


def kit_for(name: str, plugin: SimpleNamespace) -> LossTests:
    isolated = isolated_plugins((name, plugin), entry_points=False)
    isolated.__enter__()
    kit = type(f"Test{name}", (LossTests,), {"loss": name})()
    kit.close = lambda: isolated.__exit__(None, None, None)
    return kit


@pytest.fixture()
def planted_loss(request):
    """The kit for one planted loss (``request.param``: name, callable); the plugin set is restored afterwards."""
    name, loss = request.param
    kit = kit_for(name, loss_plugin(name, loss))
    yield kit
    kit.close()


def _ignores_teacher_dim(batch):
    return (batch.student_desc.norm(dim=1) - 1).abs().mean()


def _ignores_teacher_l1(batch):  # the literal `norm(1)`: the whole tensor's L1 norm
    return (batch.student_desc.norm(1) - 1).abs().mean()


def _rkd_on_the_student_itself(batch):
    import torch.nn.functional as F

    def distances(desc):
        d = F.pdist(desc)
        return d / d.mean()

    return F.smooth_l1_loss(distances(batch.student_desc), distances(batch.student_desc))  # target: the student's own


def _mse_into_the_teacher(batch):
    import torch.nn.functional as F

    return F.mse_loss(batch.student_desc, batch.teacher_desc)  # no detach: gradients flow into the teacher


def _mse_of_a_detached_student(batch):
    import torch.nn.functional as F

    return F.mse_loss(batch.student_desc.detach(), batch.teacher_desc.detach())


@pytest.mark.parametrize("planted_loss", [("norm-dim", _ignores_teacher_dim), ("norm-l1", _ignores_teacher_l1)],
                         indirect=True, ids=["norm-dim1", "norm-p1"])  # fmt: skip
def test_kit_catches_a_loss_that_ignores_the_teacher(planted_loss):
    message = failure(planted_loss.test_changes_when_only_the_teacher_changes)
    assert "ignores teacher_latent and teacher_desc" in message and "Compare the student with the teacher" in message


def test_kit_catches_an_rkd_loss_whose_target_is_the_students_own_distances():
    kit = kit_for("rkd", loss_plugin("rkd", _rkd_on_the_student_itself))
    try:
        kit.test_scalar_and_finite()  # what the old kit checked, and passed
        kit.test_zero_when_student_equals_teacher()
        assert "compare the student with itself, or ignore the teacher" in failure(kit.test_positive_when_student_differs)
        assert "ignores teacher_latent" in failure(kit.test_changes_when_only_the_teacher_changes)
    finally:
        kit.close()


def test_kit_catches_a_loss_that_sends_gradients_into_the_teacher():
    kit = kit_for("leaky", loss_plugin("leaky", _mse_into_the_teacher))
    try:
        message = failure(kit.test_gradients_reach_student_only)
    finally:
        kit.close()
    assert "sends gradients into teacher_desc" in message and "batch.teacher_desc.detach()" in message


def test_kit_catches_a_loss_whose_gradient_never_reaches_the_student():
    kit = kit_for("frozen", loss_plugin("frozen", _mse_of_a_detached_student))
    try:
        message = failure(kit.test_gradients_reach_student_only)
    finally:
        kit.close()
    assert "no gradient" in message and "reaches student_latent or student_desc" in message


def test_the_built_in_distillation_losses_pass_the_checks_that_bite():
    for name in ("ickd", "mse"):
        kit = type(f"Test{name}", (LossTests,), {"loss": name})()
        kit.test_gradients_reach_student_only()
        kit.test_positive_when_student_differs()
        kit.test_changes_when_only_the_teacher_changes()


# ---- methods ---------------------------------------------------------------------------------------


def method_plugin(name: str, encoder, aggregator=_gem, params=TinyEncoderParams, **spec) -> SimpleNamespace:
    """A method ``name``: ``encoder`` (a factory of ``params``) plus ``aggregator`` (GeM by default)."""
    agg_params = GeMParams if aggregator is _gem else NoParams
    return SimpleNamespace(
        loqi_register_encoders=hookimpl(lambda register: register(EncoderSpec(name, encoder, params, **spec))),
        loqi_register_aggregators=hookimpl(lambda register: register(AggregatorSpec(name, aggregator, agg_params))),
    )


def method_kit(name: str) -> MethodTests:
    return type(f"Test{name}", (MethodTests,), {"method": name, "image_size": (32, 32)})()


def test_kit_catches_an_unnormalised_descriptor():
    """A method whose aggregator forgets the L2 normalisation fails the kit's shape test."""
    import torch

    class Sum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=(2, 3))

    with isolated_plugins(("broken", method_plugin("broken", _encoder, lambda p, in_channels: Sum())), entry_points=False):
        message = failure(method_kit("broken").test_shapes_and_l2_normalised)
    assert 'aggregator "broken" returned descriptors of L2 norm' in message
    assert "torch.nn.functional.normalize(x, dim=1)" in message


def _wrong_out_channels(params):
    net = _encoder(params)
    net.out_channels = params.channels * 2  # the encoder returns `channels`
    return net


def test_kit_catches_a_wrong_out_channels_when_the_model_is_built():
    import torch

    from loqi_core.models.model import build_model

    def pool_built_for(params, in_channels):  # an aggregator that needs the declared channel count, as NetVLAD does
        return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    plugin = method_plugin("wide", _wrong_out_channels, pool_built_for)
    with isolated_plugins(("wide", plugin), entry_points=False):
        with pytest.raises(PluginLoadError) as info:
            build_model("wide", weights="random")
        with pytest.raises(PluginLoadError, match="out_channels"):
            method_kit("wide").test_shapes_and_l2_normalised()
    message = str(info.value)
    assert message.startswith('encoder "wide" of plugin "wide" (dist test-wide 0): its module declares out_channels=32')
    assert "returns 16 channels" in message and "set out_channels to 16" in message and len(message) < 400


def test_a_missing_out_channels_names_the_plugin_and_the_field():
    from loqi_core.models.model import build_model

    def bare(params):
        net = _encoder(params)
        del net.out_channels
        return net

    with isolated_plugins(("bare", method_plugin("bare", bare)), entry_points=False):
        with pytest.raises(PluginLoadError, match=r'encoder "bare" of plugin "bare" .* has no integer out_channels'):
            build_model("bare", weights="random")


def test_kit_catches_params_that_accept_unknown_keys():
    from pydantic import BaseModel

    class Loose(BaseModel):  # not loqi_core.plugin.Params: unknown keys are silently dropped
        channels: int = 16

    with isolated_plugins(("loose", method_plugin("loose", _encoder, params=Loose)), entry_points=False):
        message = failure(method_kit("loose").test_unknown_param_is_reported)
    assert "EncoderSpec.params must subclass loqi_core.plugin.Params" in message


def test_kit_catches_a_trainable_prefix_that_names_nothing():
    plugin = method_plugin("typo", _encoder, trainable=("encoder.layer3",))
    with isolated_plugins(("typo", plugin), entry_points=False):
        message = failure(method_kit("typo").test_gradients_reach_trainable_layers)
    assert "EncoderSpec.trainable prefix 'encoder.layer3' matches no parameter" in message


# ---- degradations ----------------------------------------------------------------------------------


def test_kit_catches_a_degradation_that_ignores_its_seed():
    import torch

    from loqi_core.plugin import Degradation, Degraded, DegradationSpec

    class Noise(Degradation):
        def __call__(self, images, *, seed=0):
            return Degraded([(img.int() + torch.randint(-8, 9, img.shape)).clamp(0, 255).to(torch.uint8) for img in images])

    plugin = SimpleNamespace(loqi_register_degradations=hookimpl(
        lambda register: register(DegradationSpec("noise", r"noise", lambda p: Noise(), examples=("noise",)))))
    kit = type("TestNoise", (DegradationTests,), {"specs": ["noise"]})()
    with isolated_plugins(("noise", plugin), entry_points=False):
        message = failure(kit.test_deterministic_given_seed)
    assert "never from global state" in message and "sample_seed" in message


def test_kit_catches_a_degradation_pattern_that_matches_anything():
    from loqi_core.plugin import Degradation, Degraded, DegradationSpec

    class Flip(Degradation):
        def __call__(self, images, *, seed=0):
            return Degraded([img.flip(-1) for img in images])

    plugin = SimpleNamespace(loqi_register_degradations=hookimpl(
        lambda register: register(DegradationSpec("flip", r"\S+", lambda p: Flip(), examples=("flip",)))))
    kit = type("TestFlip", (DegradationTests,), {"specs": ["flip"]})()
    with isolated_plugins(("flip", plugin), entry_points=False):
        message = failure(kit.test_unknown_spec_suggests_forms)
    assert "a DegradationSpec.pattern matches it; anchor the pattern on the family's name" in message


# ---- a heavy import at module level -----------------------------------------------------------------


HEAVY_PLUGIN = '''
import torch  # the planted bug: every `loqi` command would import torch

from loqi_core.plugin import LossSpec, hookimpl


@hookimpl
def loqi_register_losses(register):
    register(LossSpec("heavy", lambda params: lambda b: torch.nn.functional.mse_loss(b.student_desc, b.teacher_desc.detach())))
'''


def test_kit_catches_a_plugin_module_that_imports_torch(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "loqi_planted_heavy.py").write_text(textwrap.dedent(HEAVY_PLUGIN))
    module = importlib.import_module("loqi_planted_heavy")
    kit = type("TestHeavy", (LossTests,), {"loss": "heavy"})()
    try:
        with isolated_plugins(("heavy", module), entry_points=False):
            kit.test_changes_when_only_the_teacher_changes()  # the loss itself is fine
            message = failure(kit.test_plugin_module_imports_no_heavy_library)
    finally:
        sys.modules.pop("loqi_planted_heavy", None)
    assert message.startswith('importing plugin "heavy" (dist test-heavy 0)\'s module "loqi_planted_heavy" imports torch')
    assert "Import heavy libraries inside the factories" in message
