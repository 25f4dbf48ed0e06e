"""CPU threads for torch: exactly the CPUs a process was given, shared with its data-loader workers.

PyTorch's own default is one intra-op thread per core of the machine, whatever Ray or a container allotted,
and DataLoader workers (one thread each, PyTorch sets that) then compete with them: oversubscribed cores slow
every step. A Ray trial passes the CPUs Ray assigned it; `aaclip train` passes the cores it may run on.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_threads(cpus: float, loader_workers: int) -> int:
    """Intra-op threads: the CPUs left after one per data-loader worker, at least one."""
    return max(1, int(cpus) - loader_workers)


def configure_threads(cpus: float, loader_workers: int = 0) -> int:
    """Set torch's intra-op and inter-op threads for `cpus` CPUs; returns the intra-op count."""
    threads = torch_threads(cpus, loader_workers)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # settable once, before any inter-op work; a second fit in one process keeps the first
        log.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return threads
