"""MLflow client settings every process that talks to MLflow runs with (a study's, and `aaclip train
--tracking-uri`): no telemetry, bounded timeouts and retries; and the MLflow conventions both rely on (the
experiment tag that picks the UI's view, the run description's tag, the server's health probe). In aaclip (not
study/) because aaclip logs too and never imports study.

Why telemetry is off (the `_MLFLOW_TELEMETRY_SESSION_ID` KeyError, MLflow 3.17): `import mlflow` starts a
telemetry client (mlflow/__init__.py -> telemetry.client.set_telemetry_client) that fetches its config from a
background thread ("GetTelemetryConfig"). When that fetch fails (always, on a machine without internet) the
thread calls `_set_telemetry_client(None)`, which does `os.environ.pop("_MLFLOW_TELEMETRY_SESSION_ID")`. At the
same moment a tracking request in the main thread is in `requests` -> urllib's `getproxies_environment()`,
iterating `os.environ.items()`: a key removed between listing and reading raises KeyError, and MLflow reports the
request as failed. It hits the first requests after the import, i.e. a trial's `log_params`. MLflow's own switch
`MLFLOW_DISABLE_TELEMETRY=true` (telemetry/utils.py: is_telemetry_disabled) stops the client from starting, so
nothing touches os.environ behind our back. It must be set before mlflow is imported: `study/__init__.py`
and aaclip's MLflow modules (tracking_run.py, mlflow_model.py) apply these settings, and the driver forwards them
to Ray workers and to the embedded server.

MLflow's defaults retry a failed request 7 times with backoff factor 2 and wait 120 s for an answer: about 4
minutes per call, more for a server that never answers. Our own layer (study/spool.py) retries and spools, so
the client itself fails fast.
"""
from __future__ import annotations

import os
import urllib.request

CLIENT_SETTINGS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds per request
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # waits of about 1 s and 2 s between the attempts
}


def apply_client_settings() -> None:
    """Our settings unless the user set the variable (a slower server may need a longer timeout)."""
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)


def client_settings() -> dict[str, str]:
    """The values in force in this process, to hand to another (a Ray worker, the server)."""
    return {name: os.environ.get(name, value) for name, value in CLIENT_SETTINGS.items()}


# MLflow 3's UI opens an experiment by this tag: without it, on its GenAI pages (traces, judges); with it, on the
# model-training runs table. The value is the UI's own constant (server/js: CUSTOM_MODEL_DEVELOPMENT).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION = "mlflow.note.content"  # a run's description, rendered as markdown on its page


def is_healthy(uri: str, timeout_s: float = 2.0) -> bool:
    """The tracking server at an http(s) URI answers its /health endpoint."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, ValueError):  # refused, timed out, HTTP error, malformed URI
        return False
