"""How many loader workers and torch threads a process uses (training and evaluation): what it may run on, never more.

The CPUs come from ``os.sched_getaffinity`` (a container's or ``taskset``'s limit, not the machine's count).
Workers and torch threads together never exceed them, so a run does not oversubscribe its cores, and
``OMP_NUM_THREADS``, when set, caps the threads. Under ``torchrun`` the ranks of a node share its CPUs.
On a CPU one core is left to everything else on the machine: torch's threads wait for each other at every
operation, so one of them sharing a core with another busy process stalls them all (docs/performance.md).
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (shared evenly with the other ranks on this node under torchrun)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def loader_workers(requested: int | None, device_type: str, cpus: int | None = None) -> int:
    """``requested``, or auto: on a GPU every CPU but one feeds it; on a CPU the model needs the cores, so a
    quarter of them (at most 4) load and degrade, and none on 1–3 CPUs (the main process loads between steps)."""
    if requested is not None:
        return requested
    cpus = cpus or available_cpus()
    if device_type == "cuda":
        return cpus - 1
    return min(4, cpus // 4)


def torch_threads(requested: int | None, workers: int, device_type: str, cpus: int | None = None) -> int:
    """``requested``, or auto: the CPUs the workers leave but one (one thread on a GPU: it only launches
    kernels), at least one, capped by ``OMP_NUM_THREADS`` when that is set."""
    if requested is not None:
        return requested
    cpus = cpus or available_cpus()
    n = 1 if device_type == "cuda" else max(1, cpus - workers - 1)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return n
