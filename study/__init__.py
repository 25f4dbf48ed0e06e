"""Hyperparameter studies over aaclip's feedback training: Ray Tune + Optuna, tracked in MLflow (DESIGN §5-§6).

    spec.py       study spec (search_spaces/*.yaml): parsing and every up-front check
    space.py      search space -> Optuna define-by-run function, grid points
    searcher.py   OptunaSearch that tells pruned/failed trials truthfully; the baseline trial first
    trainable.py  one trial = one aaclip.train.fit, reported to Tune and logged to MLflow from the worker
    record.py     the study's record: tags, trial outcomes, the best trial, a study rebuilt from its parent run
    tracking.py   MLflow client, links, the parent run and each trial's run (idempotent per trial)
    guard.py      gradient guard stopper; callbacks.py: outcomes to MLflow, progress lines
    launch.py     run and resume; cluster.py: Ray connection and checks; tuner.py: the Tuner, ASHA, the searcher
    storage.py    Ray results and the Optuna storage; preflight.py: checks before anything is written
    server.py     the embedded MLflow server
    status.py, export.py, report.py, plots.py, cli.py (`aaclip-study`)
"""

from aaclip.mlflow_env import apply_client_settings

apply_client_settings()  # before anything imports mlflow (see mlflow_env.py)
