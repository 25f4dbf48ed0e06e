"""Step time and memory of a configuration, per stage: what `aaclip profile` prints and the benchmarks reuse.

A step is exactly a training step of `aaclip.train` (the stage's loss, backward, optimizer step) on a real batch
of the configured data. Peak memory is CUDA's max allocated on a GPU, else the process's resident set sampled
during the steps. The largest batch that fits a memory limit comes from a straight line through the peaks at two
batch sizes (activations grow linearly with the batch; weights and libraries are the intercept).
"""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch

from aaclip.config import TrainConfig
from aaclip.schedule import IMAGE, TEXT, Stage, StagePlan
from aaclip.session import Session, build_session
from aaclip.stages import STAGE_LOSSES
from aaclip.train import make_optimizer


@dataclass
class StageProfile:
    stage: str
    batch: int
    step_s: float
    peak_bytes: int
    memory_kind: str  # "cuda-max-allocated" or "cpu-rss"
    bytes_per_image: float
    largest_batch: int | None  # within the memory limit asked for, None without one


def stage_plan(stage: Stage) -> StagePlan:
    return StagePlan(loop=1, stage=stage, epochs=1)


def stage_batch(session: Session, stage: Stage, size: int) -> dict:
    """A real batch of `size` items of the stage's training data (items repeat when the data has fewer)."""
    dataset = session.data.datasets[stage]
    items = [dataset[index % len(dataset)] for index in range(size)]
    return session.data.collate(items)


def train_step(session: Session, stage: Stage, batch: dict, optimizer: torch.optim.Optimizer) -> float:
    inputs = session.stage_inputs(stage_plan(stage))
    loss = STAGE_LOSSES[stage](session.model, batch, inputs, session.stage_settings)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(session: Session, stage: Stage, batch: dict, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per step, after `warmup` steps (which also fill the feature cache of Stage 1)."""
    session.model.train()
    optimizer = make_optimizer(session, stage_plan(stage))
    times = []
    for index in range(warmup + repeats):
        synchronize(session.device)
        started = time.perf_counter()
        train_step(session, stage, batch, optimizer)
        synchronize(session.device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------------------------
# Memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_resident() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resident_bytes()


@contextmanager
def peak_memory(device: torch.device, interval_s: float = 0.002) -> Iterator[dict]:
    """{"bytes": peak, "kind": ...} over the block: CUDA max allocated, or the process's resident peak on CPU.

    On Linux the kernel keeps the resident high-water mark, reset at the start: exact, whatever the load. Elsewhere
    the resident set is sampled every `interval_s` (a short peak between two samples can be missed)."""
    result = {"bytes": 0, "kind": "cuda-max-allocated" if device.type == "cuda" else "cpu-rss"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["bytes"] = torch.cuda.max_memory_allocated(device)
        return
    if reset_peak_resident():
        yield result
        result["bytes"] = peak_resident_bytes()
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["bytes"] = max(result["bytes"], resident_bytes())
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result["bytes"] = max(result["bytes"], resident_bytes())


def step_peak(session: Session, stage: Stage, size: int) -> tuple[int, str]:
    batch = stage_batch(session, stage, size)
    time_steps(session, stage, batch, repeats=0, warmup=1)  # optimizer state and caches exist before measuring
    with peak_memory(session.device) as peak:
        time_steps(session, stage, batch, repeats=1, warmup=0)
    return peak["bytes"], peak["kind"]


def largest_batch(base_bytes: float, per_image: float, limit_bytes: float) -> int:
    if per_image <= 0:
        return 0 if base_bytes > limit_bytes else 1 << 20
    return max(0, math.floor((limit_bytes - base_bytes) / per_image))


# ---------------------------------------------------------------------------------------------------------------
# The profile of a configuration


def profile_stage(session: Session, stage: Stage, repeats: int, limit_bytes: float | None) -> StageProfile:
    size = session.data.batch_size(stage)
    small, large = max(1, size // 2), max(2, size)
    peak_small, _ = step_peak(session, stage, small)
    peak_large, kind = step_peak(session, stage, large)
    per_image = max(0.0, (peak_large - peak_small) / (large - small))
    fits = None if limit_bytes is None else largest_batch(peak_large - per_image * large, per_image, limit_bytes)
    times = time_steps(session, stage, stage_batch(session, stage, size), repeats)
    return StageProfile(stage.label, size, statistics.median(times), peak_large, kind, per_image, fits)


def profile_config(config: TrainConfig, repeats: int = 3, memory_gb: float | None = None) -> list[StageProfile]:
    session = build_session(config)
    limit = None if memory_gb is None else memory_gb * 2**30
    return [profile_stage(session, stage, repeats, limit) for stage in (TEXT, IMAGE)]


HEADROOM = 1.1  # max_memory_allocated leaves out the allocator's fragmentation and the CUDA context


def gpu_fraction(peak_bytes: int, device: torch.device) -> float | None:
    """The smallest 1/k (k <= 8) of the device that holds the peak plus headroom: trials.resources.gpu."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    share = peak_bytes * HEADROOM / total
    k = max(1, math.floor(1 / share)) if share > 0 else 8
    return 1 / min(k, 8)


def as_dict(profile: StageProfile) -> dict:
    return asdict(profile)
