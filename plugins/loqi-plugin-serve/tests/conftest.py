"""Fixtures shared by the serve tests: a demo index built once per session (lite0-gem with its ImageNet weights on
the bundled demo set, offline), the engine that serves it, and a server on an ephemeral loopback port."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def load_helpers():
    """tests/serve_helpers.py, loaded by path (the tests are no package), once."""
    if "serve_helpers" not in sys.modules:
        spec = importlib.util.spec_from_file_location("serve_helpers", Path(__file__).with_name("serve_helpers.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["serve_helpers"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["serve_helpers"]


helpers = load_helpers()


@pytest.fixture(scope="session")
def kit():
    """The helpers module (tests/serve_helpers.py)."""
    return helpers


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory, cache_dir) -> Path:
    """The demo database (300 real frames) encoded with lite0-gem's ImageNet weights, flat FAISS, thumbnails."""
    import torch

    from loqi_plugin_serve.index import build_index

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("indexes") / "demo"
    return build_index(helpers.index_config(cache_dir), "demo", out, echo=lambda _: None)


@pytest.fixture(scope="session")
def engine(demo_index):
    from loqi_plugin_serve.engine import load_engine

    return load_engine(demo_index, device="cpu")


@pytest.fixture(scope="session")
def server(engine):
    from loqi_plugin_serve.app import create_app

    running = helpers.Server(create_app(engine, helpers.LIMITS))
    yield running
    running.stop()
