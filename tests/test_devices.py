"""``loqi_core.util.devices``: one resolver for every engine and command, with one clear line for a missing device."""

from __future__ import annotations

import pytest
import torch

from loqi_core.errors import ConfigError
from loqi_core.util.devices import check_device_name, resolve_device


def test_names_resolve_to_devices_this_machine_has():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.parametrize("name", ["banana", "cuda:", "cpu:0", "CUDA"])
def test_a_malformed_name_is_one_clear_error(name):
    with pytest.raises(ConfigError, match=f'device: "{name}" is not a device \\(auto, cpu, cuda, cuda:N, mps\\)'):
        resolve_device(name)
    with pytest.raises(ValueError, match="is not a device"):
        check_device_name(name)


def test_a_missing_gpu_or_index_is_one_clear_error():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match='device: "cuda:99" asked for, but '):
        resolve_device("cuda:99")
    if count == 0:
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="MPS is not available here"):
            resolve_device("mps")


def test_the_config_checks_the_same_syntax():
    from loqi_core.config import RunConfig

    assert RunConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError, match='"gpu" is not a device'):
        RunConfig(device="gpu")
