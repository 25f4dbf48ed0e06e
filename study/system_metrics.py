"""What cluster users watch while a trial runs: its node's CPU, memory, disk, network and (on GPU nodes) GPU use,
and the trial process's own share, as `system/*` metrics of the trial's MLflow run.

MLflow's own SystemMetricsMonitor (mlflow.system_metrics) does the sampling, from a daemon thread of the trial's
process, for a run given by id (a trial writes through MlflowClient, not a fluent run). Its step is the sample
count, continued by a restarted attempt (resume_logging). It ends with the trial: `finish` at the end of `fit`,
the process's exit when Ray kills a stopped trial, and, whichever comes first, its own check that the run is no
longer RUNNING (the driver closes a stopped trial's run). MLflow's monitors report the whole node (every GPU
NVML sees); several trials share a node, so a `ProcessMonitor` adds what this trial's process itself uses.
System metrics are an observation, not the record: they bypass the spool (study/spool.py), and a server that is
away stops them for the rest of the attempt instead of holding the trial.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

import psutil
from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from study.spool import is_transient

MEGABYTE = 1e6


class ProcessMonitor(BaseMetricsMonitor):
    """The trial process's CPU (percent of one core, summed over its threads), resident memory and, once it
    uses CUDA, the GPU memory its PyTorch caching allocator holds."""

    def __init__(self):
        super().__init__()
        self.process = psutil.Process(os.getpid())
        self.process.cpu_percent()  # psutil measures from the previous call: the first one only sets the start

    def collect_metrics(self) -> None:
        self._metrics["process_cpu_utilization_percentage"].append(self.process.cpu_percent())
        self._metrics["process_memory_rss_megabytes"].append(self.process.memory_info().rss / MEGABYTE)
        gpu_megabytes = torch_gpu_megabytes()
        if gpu_megabytes is not None:
            self._metrics["process_gpu_memory_reserved_megabytes"].append(gpu_megabytes)

    def aggregate_metrics(self) -> dict[str, float]:
        return {key: round(sum(values) / len(values), 1) for key, values in self._metrics.items() if values}


def torch_gpu_megabytes() -> float | None:
    """GPU memory this process's PyTorch holds on its devices, or None where it has not touched CUDA."""
    torch = sys.modules.get("torch")  # never imports torch (nor starts CUDA) for a measurement
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return sum(torch.cuda.memory_reserved(device) for device in range(torch.cuda.device_count())) / MEGABYTE


@contextmanager
def system_metrics(run_id: str, tracking_uri: str, interval_s: float | None, warn=print) -> Iterator[None]:
    """Samples `system/*` metrics into the run every `interval_s` seconds (None: off) while the block runs, and
    once more as it ends, so that even a trial shorter than the interval has its numbers. (MLflow's first
    sample of the node's CPU reads 0: psutil's first reading in a thread has nothing to compare with.)"""
    if interval_s is None:
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                   tracking_uri=tracking_uri)
    monitor.monitors.append(ProcessMonitor())
    psutil.cpu_percent()  # psutil measures the node's CPU per calling thread: the last sample's starts here
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        publish_last_sample(monitor, warn)


def publish_last_sample(monitor, warn) -> None:
    """One sample as the block ends, taken in this thread: the node's CPU is its mean over the whole block. The
    sample the monitor's thread holds goes (it would drop it anyway; its CPU reading is that thread's)."""
    for part in monitor.monitors:
        part.clear_metrics()
    try:
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as error:  # noqa: BLE001 - only the server's absence is forgiven
        if not is_transient(error):
            raise
        warn(f"the trial's last system metrics were not logged (tracking server away: {error})")
