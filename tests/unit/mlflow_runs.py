"""MLflow run entities (mlflow.entities.Run) as a study's child runs carry them, for tests of what reads them."""
from __future__ import annotations

from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag


def make_run(name: str, tags: dict[str, str], metrics: dict[str, float], params: dict[str, str] | None = None) -> Run:
    info = RunInfo(f"id-{name}", "0", "", "FINISHED", 0, 1, "active", run_name=name)
    return Run(info, RunData(metrics=[Metric(key, value, 0, 1) for key, value in metrics.items()],
                             params=[Param(key, value) for key, value in (params or {}).items()],
                             tags=[RunTag(key, value) for key, value in tags.items()]))
