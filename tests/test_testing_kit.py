"""The conformance kit run on the tiny fixture plugin: what a plugin's own tests look like, and proof the kit bites."""

import pytest

from loqi_core.testing import DegradationTests, MethodTests, isolated_plugins
from loqi_core.testing.tiny import tiny_plugin


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


def test_kit_catches_an_unnormalised_descriptor():
    """A method whose aggregator forgets the L2 normalisation fails the kit's shape test."""
    import torch

    from loqi_core.plugin import hookimpl
    from loqi_core.hooks.specs import AggregatorSpec, EncoderSpec
    from loqi_core.testing.tiny import TinyEncoderParams, _encoder

    class Sum(torch.nn.Module):
        def forward(self, x):
            return x.sum(dim=(2, 3))

    class Broken:
        loqi_register_encoders = hookimpl(lambda register: register(EncoderSpec("broken", _encoder, TinyEncoderParams)))
        loqi_register_aggregators = hookimpl(lambda register: register(AggregatorSpec("broken", lambda p, in_channels: Sum())))

    class TestBroken(MethodTests):
        method = "broken"
        image_size = (32, 32)

    with isolated_plugins(("broken", Broken), entry_points=False):
        with pytest.raises(AssertionError):
            TestBroken().test_shapes_and_l2_normalised()
