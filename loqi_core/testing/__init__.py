"""Conformance tests every plugin's tests subclass in a few lines, plus helpers for plugin tests.

    from loqi_core.testing import MethodTests

    class TestLite0(MethodTests):
        method = "lite0-gem"
        image_size = (64, 64)
"""

from loqi_core.testing.helpers import isolated_plugins, random_images, random_state_dict
from loqi_core.testing.kit import AggregatorTests, DatasetTests, DegradationTests, LossTests, MethodTests

__all__ = [
    "AggregatorTests",
    "DatasetTests",
    "DegradationTests",
    "LossTests",
    "MethodTests",
    "isolated_plugins",
    "random_images",
    "random_state_dict",
]
