"""Authenticated servers: MLflow with ``--app-name basic-auth`` and Prefect with an API auth
string refuse anonymous clients, and loopml reaches them with credentials taken from the
environment only (nothing written to disk or logged)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, last_json
from tests.scaleout.conftest import run_loopml

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

PROJECT = "telco"


def _status(url: str, *, basic: str | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_mlflow_refuses_anonymous_clients_and_accepts_credentials(secured_engines, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    url = f"{secured_engines.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1"
    user = secured_engines.mlflow_username
    assert _status(url) == 401
    assert _status(url, basic=f"{user}:wrong-password") == 401
    assert _status(url, basic=f"{user}:{secured_engines.mlflow_password}") == 200

    client = MlflowClient(tracking_uri=secured_engines.mlflow.url)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
        client.search_experiments(max_results=1)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secured_engines.mlflow_password)
    assert client.search_experiments(max_results=1) is not None


def test_prefect_refuses_clients_without_the_auth_string(secured_engines):
    api = secured_engines.prefect.api_url
    assert _status(f"{api}/health") == 200  # left open for probes
    assert _status(f"{api}/flows/filter", body={}) == 401
    assert _status(f"{api}/flows/filter", body={}, basic="loopml:not-the-string") == 401
    assert _status(f"{api}/flows/filter", body={}, basic=secured_engines.prefect_auth_string) == 200


@pytest.fixture(scope="module")
def secured_project(secured_engines, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("secured-project")
    result = run_loopml(
        "init",
        str(SAMPLE),
        "--target",
        "churn",
        "--name",
        PROJECT,
        "--positive-label",
        "Yes",
        "--json",
        cwd=folder,
        env=secured_engines.env,
    )
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("missing", ["PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD"])
def test_loopml_without_credentials_fails_with_one_line(secured_engines, secured_project, missing):
    credentials = {k: v for k, v in secured_engines.credentials.items() if k != missing}
    result = run_loopml(
        "train",
        PROJECT,
        "--trials",
        "1",
        "--json",
        cwd=secured_project,
        env={**secured_engines.env, **credentials},
        timeout=300,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("loopml: error:")
    assert "401" in lines[-1] or "nauthorized" in lines[-1]


def test_loopml_train_with_credentials_from_the_environment(
    secured_engines, secured_project, monkeypatch
):
    from mlflow.tracking import MlflowClient

    result = run_loopml(
        "train",
        PROJECT,
        "--trials",
        "4",
        "--json",
        cwd=secured_project,
        env={**secured_engines.env, **secured_engines.credentials},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trained = last_json(result.stdout)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", secured_engines.mlflow_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secured_engines.mlflow_password)
    client = MlflowClient(tracking_uri=secured_engines.mlflow.url)
    champion = client.get_model_version_by_alias(PROJECT, "champion")
    run = client.get_run(trained["run_id"])
    assert champion.version == trained["version"]
    # The flow (shards on the CLI's local Dask cluster included) reported to the secured server.
    runs = json.loads(
        _body(
            f"{secured_engines.prefect.api_url}/flow_runs/filter",
            {"flows": {"name": {"any_": ["train"]}}},
            secured_engines.prefect_auth_string,
        )
    )
    assert "COMPLETED" in [flow_run["state_type"] for flow_run in runs]

    # Credentials come from the environment only: never written, logged or echoed.
    secrets = [secured_engines.mlflow_password, secured_engines.prefect_auth_string.split(":")[1]]
    recorded = [*run.data.params.values(), *run.data.tags.values(), *champion.tags.values()]
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
        assert not any(secret in str(value) for value in recorded)
        for folder in (secured_project, secured_engines.home):
            for path in folder.rglob("*"):
                if path.is_file():
                    assert secret.encode() not in path.read_bytes(), path


def _body(url: str, body: dict, basic: str) -> str:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()
