"""Registration lands in the store of the client it is given, whatever the process environment
points MLflow's fluent API at, and leaves that environment as it found it."""

from __future__ import annotations

import os

import pytest
from mlflow.tracking import MlflowClient

from tests.faults.tiny import register_tiny


def test_a_version_is_registered_in_the_clients_store_not_the_environments(
    tmp_path, monkeypatch
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", elsewhere)
    wanted = f"sqlite:///{tmp_path / 'wanted.db'}"

    registered = register_tiny(wanted, "routed")

    assert MlflowClient(wanted, wanted).get_model_version("routed", registered.version)
    assert MlflowClient(elsewhere, elsewhere).search_registered_models() == []
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere
    assert os.environ["MLFLOW_REGISTRY_URI"] == elsewhere


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default artifact root (./mlruns) stays in the test's folder
