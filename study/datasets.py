"""The images each trial trained, validated and tested on, in its MLflow run: `split.*` params and dataset inputs.

`fit` hands the splits it loaded to `SplitRecorder` before its first epoch (one read of the headers per trial).
Each split becomes an MLflow dataset input with the context tag train, val or test: named by its role, kind,
root and split, its digest the split's fingerprint (aaclip.data.splits: equal wherever a copy of the data lies),
its source the root, its profile the counts. Runs that used the same images share one dataset entry in the
experiment, so MLflow's UI shows which trials saw the same data. Writes go through the trial's spool: the
operation is plain JSON, and logging an input again (a restarted attempt, a replay) adds nothing.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any


from aaclip.config import DataConfig, DatasetSpec
from aaclip.data.loading import dataset_root
from aaclip.data.records import Record
from aaclip.data.splits import split_fingerprint, split_summary
from study.spool import batch_op


def dataset_record(context: str, spec: DatasetSpec, records: list[Record]) -> dict[str, Any]:
    """One split as a JSON-able dataset input (a spooled operation's payload)."""
    root = dataset_root(spec)
    part = f" {spec.holdout.part}" if spec.holdout is not None else ""
    shots = f", {spec.shots} shots" if spec.shots is not None else ""
    profile = {"images": len(records), "anomalous": sum(record.label == 1 for record in records),
               "classes": dict(sorted(Counter(record.class_name for record in records).items()))}
    return {"context": context, "name": f"{context}: {spec.kind} {root.name}/{spec.split}{part}{shots}",
            "digest": split_fingerprint(records), "source_type": "local", "source": str(root),
            "profile": json.dumps(profile)}


def inputs_op(run_id: str, data: DataConfig, splits: dict[str, list[Record]]) -> dict[str, Any]:
    """The spool operation that logs every split of `splits` as a dataset input of the run."""
    specs = {"train": data.train, "val": data.val, "test": data.test}
    return {"op": "log_inputs", "run_id": run_id,
            "datasets": [dataset_record(name, specs[name], records) for name, records in splits.items()]}


class SplitRecorder:
    """fit's on_splits callback: the splits' sizes and fingerprints as params, and the dataset inputs."""

    def __init__(self, run, data: DataConfig):
        self.run, self.data = run, data  # run: the trial's study.tracking.TrialRun

    def __call__(self, splits: dict[str, list[Record]]) -> None:
        params = {key: str(value) for key, value in split_summary(splits).items()}
        self.run.tracker.write(batch_op(self.run.run_id, params=params))  # a restart logs the same values again
        self.run.tracker.write(inputs_op(self.run.run_id, self.data, splits))
