"""torch threads follow the CPUs a process was given, less one per data-loader worker."""
from __future__ import annotations

import torch

from aaclip.threads import available_cpus, configure_threads, torch_threads


def test_loader_workers_take_their_cores_from_torch() -> None:
    assert torch_threads(8, 0) == 8
    assert torch_threads(8, 2) == 6
    assert torch_threads(2, 4) == 1  # never zero threads
    assert torch_threads(0.5, 0) == 1  # a fractional CPU from Ray is one thread


def test_configure_threads_sets_torch() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(available_cpus(), 1) == torch.get_num_threads() == max(1, available_cpus() - 1)
    finally:
        torch.set_num_threads(before)
