"""Fixtures shared by the core's tests."""

from __future__ import annotations

import pytest
import torch

from loqi_core.testing.helpers import isolated_plugins
from loqi_core.testing.tiny import tiny_plugin


@pytest.fixture
def one_thread():
    """Two shared cores: one torch thread avoids oversubscription (results do not depend on it here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny():
    """The plugins with the tiny test method registered."""
    with isolated_plugins(("tiny", tiny_plugin)) as plugins:
        yield plugins
