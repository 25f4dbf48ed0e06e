"""GPUs that Ray promises and CUDA must deliver.

Ray's GPU resources are logical: a node started with `num_gpus=2` (or a misdetected one) offers GPUs that
torch cannot see. A trial given a GPU there would train on the CPU, or fail in the middle of its first step,
and Tune would retry it on the same node. Both checks here fail with one line instead: the driver's before any
trial starts, the trial's before it builds anything.
"""
from __future__ import annotations

import socket

import ray

from study.errors import StudyError

PROBE_TIMEOUT_S = 120.0


def cuda_report() -> tuple[str, bool, list]:
    import torch  # lazy: runs as a Ray task on the GPU's node; the driver itself never imports torch

    return socket.gethostname(), torch.cuda.is_available(), [str(i) for i in ray.get_gpu_ids()]


def check_cuda_where_gpus_go(gpus_per_trial: float, source: str) -> None:
    """Driver side: a probe holding a trial's GPU share lands where a trial would, and must find CUDA there."""
    if gpus_per_trial <= 0:
        return
    probe = ray.remote(num_gpus=gpus_per_trial, num_cpus=0)(cuda_report).remote()
    ready, _ = ray.wait([probe], timeout=PROBE_TIMEOUT_S)
    if not ready:  # every GPU busy (another study): the trials' own check still stands
        ray.cancel(probe)
        return
    host, available, ids = ray.get(probe)
    if not available:
        raise StudyError(f"{source}: trials.resources.gpu: {gpus_per_trial:g}, but on {host} Ray's GPU {','.join(ids)} "
                         "is not usable by torch (torch.cuda.is_available() is False): start Ray there with "
                         "--num-gpus=0, or install a CUDA build of torch")


def require_cuda_for_assigned_gpus() -> None:
    """Trial side: Ray assigned this trial GPU ids; CUDA must see them."""
    host, available, ids = cuda_report()
    if ids and not available:
        raise StudyError(f"trial on {host} was given GPU {','.join(ids)} by Ray, but torch.cuda.is_available() is "
                         "False there; this trial cannot run on that node")
