"""aaclip.profile's pieces: the largest batch within a memory limit, and the CPU peak-memory sampler."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from aaclip.profile import largest_batch

ROOT = Path(__file__).resolve().parents[2]


def test_largest_batch_follows_the_line_through_two_peaks() -> None:
    assert largest_batch(base_bytes=1_000, per_image=100, limit_bytes=1_950) == 9
    assert largest_batch(base_bytes=2_000, per_image=100, limit_bytes=1_000) == 0  # the weights alone do not fit


def test_cpu_peak_sees_a_temporary_allocation() -> None:
    """In a fresh process: in a long one (the test session) the allocator may serve the block from pages it
    already holds, and then the resident peak rightly does not move."""
    program = """
import torch
from aaclip.profile import peak_memory, resident_bytes
before = resident_bytes()
with peak_memory(torch.device("cpu")) as peak:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written so the pages are resident
    block.add_(1)
    del block
print(peak["kind"], peak["bytes"] - before, resident_bytes() - before)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    kind, grew, after = done.stdout.split()
    assert kind == "cpu-rss"
    assert int(grew) >= 48 * 2**20 > int(after)  # the peak saw the block, which is gone again afterwards
