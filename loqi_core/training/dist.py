"""torch.distributed setup: the same command line runs alone or under ``torchrun --nproc-per-node N``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistEnv:
    """This process's place in the job; ``world_size == 1`` when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.initialized_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(device: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU) and pick this rank's device.

    ``device`` is the config's: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; under torchrun a
    CUDA device becomes ``cuda:LOCAL_RANK``. A device this machine lacks is one clear ``ConfigError`` line."""
    from loqi_core.util.devices import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    env = DistEnv()
    dev = resolve_device(device)
    if world > 1:
        env = DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
        if dev.type == "cuda":
            dev = torch.device("cuda", env.local_rank)
            torch.cuda.set_device(dev)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            env.initialized_here = True
    elif dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return env, dev
