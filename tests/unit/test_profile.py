"""aaclip.profile's pieces: the largest batch within a memory limit, and the CPU peak-memory sampler."""
from __future__ import annotations

import torch

from aaclip.profile import largest_batch, peak_memory, resident_bytes


def test_largest_batch_follows_the_line_through_two_peaks() -> None:
    assert largest_batch(base_bytes=1_000, per_image=100, limit_bytes=1_950) == 9
    assert largest_batch(base_bytes=2_000, per_image=100, limit_bytes=1_000) == 0  # the weights alone do not fit


def test_cpu_peak_sees_a_temporary_allocation() -> None:
    before = resident_bytes()
    with peak_memory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so the pages are resident
        block.add_(1)
        del block
    assert peak["kind"] == "cpu-rss"
    assert peak["bytes"] >= before + 48 * 2**20
