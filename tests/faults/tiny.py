"""A tiny real model registered through loopml's own registration (seconds, not a search).

Run as a script (``python -m tests.faults.tiny NAME die``) it registers a version, leaves an
MLflow run open, then kills itself with SIGKILL: the half-state a crash mid-train leaves.
"""

from __future__ import annotations

import os
import signal
import sys

import mlflow
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from loopml.modeling import skops_trusted_types
from loopml.registry import (
    TAG_OWNER,
    RegisteredVersion,
    ensure_experiment,
    log_and_register,
    mlflow_client,
    process_owner,
)


def register_tiny(tracking_uri: str, name: str, slope: float = 1.0) -> RegisteredVersion:
    """Register a small logistic pipeline as a new version of ``name`` (gate still pending)."""
    client = mlflow_client(tracking_uri)
    frame = pd.DataFrame({"x": [float(i) * slope for i in range(20)]})
    target = pd.Series(["no"] * 10 + ["yes"] * 10)
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())])
    model.fit(frame, target)
    return log_and_register(
        client=client,
        experiment_id=ensure_experiment(client, name, None),
        name=name,
        model=model,
        input_example=frame,
        trusted_types=skops_trusted_types(model),
        params={"family": "tiny"},
        metrics={"test_roc_auc": 1.0},
        run_tags={},
        version_tags={"loopml.parent_version": "none"},
        figures={},
        reference_files={},
        run_name="tiny",
    )


if __name__ == "__main__":
    tracking, project = sys.argv[1], sys.argv[2]
    registered = register_tiny(tracking, project)
    mlflow.set_tracking_uri(tracking)
    mlflow.start_run(
        experiment_id=ensure_experiment(mlflow_client(tracking), project, None),
        tags={TAG_OWNER: process_owner()},
    )
    print(registered.version, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
