"""The Ray cluster a study runs on: connecting to it, and checking that it can run the study's trials.

What of the driver's environment reaches the trials through Ray's runtime_env is decided in study/trainable.py
(forwarded_environment), next to what the TrialContext carries.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import ray

from study.devices import check_cuda_where_gpus_go
from study.errors import StudyError
from study.spec import Study
from study.trainable import forwarded_environment

Echo = Callable[..., None]


def connect_ray(address: str | None) -> bool:
    """Connect to RAY_ADDRESS / --address, or start a local Ray; True if this call started the connection."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"runtime_env": {"env_vars": forwarded_environment(secrets=False)},
                               "log_to_driver": False,
                               "logging_level": "WARNING"}
    if not address:
        # A local cluster needs no token; with token auth on, Ray would also write ~/.ray/auth_token (DESIGN §8).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        options["include_dashboard"] = False
        # "local": a fresh Ray of our own; without it ray.init() joins whatever cluster this machine last
        # started (/tmp/ray/ray_current_cluster), which is not what "no --address" promises.
        address = "local"
    ray.init(address=address, **options)
    return True


def warn_if_unreachable(uri: str, echo: Echo) -> None:
    """A loopback tracking server is invisible to trials on other machines of a real cluster."""
    host = uri.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    nodes = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
    if host in ("127.0.0.1", "localhost") and len(nodes) > 1:
        echo(f"note: the tracking server {uri} listens on loopback, but the Ray cluster spans {len(nodes)} hosts; "
             "trials elsewhere cannot log to it: pass --tracking-uri http://<a reachable host>:<port>")


def check_cluster(study: Study) -> None:
    resources = study.spec.trials.resources
    cluster = ray.cluster_resources()
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if resources.gpu > 0 and gpus == 0:
        raise StudyError(f"{study.source}: trials.resources.gpu: {resources.gpu} GPU per trial requested, but the "
                         "Ray cluster has no GPU (set it to 0, or connect to a GPU cluster with --address)")
    if resources.gpu > gpus:
        raise StudyError(f"{study.source}: trials.resources.gpu: {resources.gpu} GPUs per trial, but the cluster "
                         f"has {gpus:g}")
    if resources.cpu > cpus:
        raise StudyError(f"{study.source}: trials.resources.cpu: {resources.cpu:g} CPUs per trial, but the cluster "
                         f"has {cpus:g}")
    check_cuda_where_gpus_go(resources.gpu, study.source)
