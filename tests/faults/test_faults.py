"""Each fault of issue 13 injected for real; what loopml must (not) do afterwards.

README "Reliability" lists these tests next to the faults they show.
"""

from __future__ import annotations

import contextvars
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow

from loopml import ledger
from loopml.errors import ModelRefused, RegistryError
from loopml.gate import GateDecision
from loopml.registry import TAG_GATE, get_version, load_version, version_by_alias
from loopml.runtime import open_runtime
from loopml.settings import mlflow_environment
from tasks.registry import apply_gate, recover_interrupted
from tests.conftest import REPO, SAMPLE, free_port, init_project, run_cli
from tests.faults.tiny import register_tiny

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture
def project(tmp_path, loopml_home, monkeypatch, mlflow_on_postgres):
    """A loopml project whose registry is the PostgreSQL-backed MLflow server."""
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_on_postgres.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    for key, value in mlflow_environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}).items():
        monkeypatch.setenv(key, value)
    directory = tmp_path / "project"
    directory.mkdir()
    data = tmp_path / "sample.csv"
    pd.read_csv(SAMPLE).head(200).to_csv(data, index=False)
    init_project(data, "churn", "faults", directory)
    yield directory


def test_registry_outage_is_an_error_never_no_champion(project, mlflow_on_postgres):
    registered = register_tiny(mlflow_on_postgres.url, "faults")
    client = MlflowClient(mlflow_on_postgres.url)
    client.set_registered_model_alias("faults", "champion", registered.version)

    mlflow_on_postgres.stop()
    started = time.monotonic()
    with pytest.raises(RegistryError, match="nothing was promoted"):
        version_by_alias(client, "faults", "champion")
    assert time.monotonic() - started < 30

    mlflow_on_postgres.start()
    assert version_by_alias(client, "faults", "champion").version == registered.version


@flow(name="faults-recover")
def _recover(project_name: str, project_dir: str) -> list:
    return recover_interrupted(open_runtime(project_name, project_dir))


def test_sigkill_after_registration_leaves_nothing_undecided(
    project, mlflow_on_postgres, prefect_api
):
    killed = subprocess.run(
        [sys.executable, "-m", "tests.faults.tiny", mlflow_on_postgres.url, "faults"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    version = killed.stdout.strip().splitlines()[-1]
    client = MlflowClient(mlflow_on_postgres.url)
    assert get_version(client, "faults", version).tags[TAG_GATE] == "pending"
    running = client.search_runs(
        [client.get_experiment_by_name("faults").experiment_id], "attributes.status = 'RUNNING'"
    )
    assert len(running) == 1

    settled = _recover("faults", str(project))

    assert [(entry["action"], entry["version"]) for entry in settled] == [("failed", version)]
    assert get_version(client, "faults", version).tags[TAG_GATE] == "failed"
    assert version_by_alias(client, "faults", "champion") is None
    assert client.get_run(running[0].info.run_id).info.status == "FAILED"
    home = Path(os.environ["LOOPML_HOME"])
    assert ledger.read_entries(home / "ledger", "faults")[-1]["action"] == "failed"
    assert _recover("faults", str(project)) == []  # settled once


@flow(name="faults-gate")
def _gate(project_name: str, project_dir: str, version: str) -> GateDecision:
    runtime = open_runtime(project_name, project_dir)
    registered = type("Registered", (), {"version": version, "run_id": "", "name": project_name})
    first = GateDecision(promote=True, reason="no champion yet", metric="roc_auc")
    return apply_gate(
        runtime,
        registered,
        first,
        trigger={"kind": "manual"},
        decided_against=None,
        redecide=lambda champion: GateDecision(
            promote=False, reason=f"compared with v{champion.version}", metric="roc_auc"
        ),
    )


def test_two_first_promotions_at_once_promote_one_and_compare_the_other(
    project, mlflow_on_postgres, prefect_api
):
    versions = [register_tiny(mlflow_on_postgres.url, "faults").version for _ in range(2)]
    decisions: dict[str, GateDecision] = {}
    errors: list[BaseException] = []

    def gate(version: str) -> None:
        try:
            decisions[version] = _gate("faults", str(project), version)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # Each thread carries this test's Prefect settings (a context variable).
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(gate, version))
        for version in versions
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors, errors
    promoted = [v for v, decision in decisions.items() if decision.promote]
    assert len(promoted) == 1, decisions
    other = next(v for v in versions if v not in promoted)
    assert decisions[other].reason == f"compared with v{promoted[0]}"
    client = MlflowClient(mlflow_on_postgres.url)
    assert str(version_by_alias(client, "faults", "champion").version) == promoted[0]
    home = Path(os.environ["LOOPML_HOME"])
    actions = [
        (e["action"], e["previous_champion"])
        for e in ledger.read_entries(home / "ledger", "faults")
    ]
    assert sorted(actions, key=str) == sorted(
        [("promoted", None), ("refused", promoted[0])], key=str
    )


class _Payload:
    """What a crafted pickle does when loaded: create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_artifact_is_refused_and_runs_no_code(project, mlflow_on_postgres, tmp_path):
    registered = register_tiny(mlflow_on_postgres.url, "faults")
    client = MlflowClient(mlflow_on_postgres.url)
    model_version = get_version(client, "faults", registered.version)
    assert load_version(client, model_version).predict(
        __import__("pandas").DataFrame({"x": [0.0, 19.0]})
    ).tolist() == ["no", "yes"]

    (mlmodel,) = (mlflow_on_postgres.folder / "artifacts").rglob("MLmodel")
    marker = tmp_path / "code-ran"
    (mlmodel.parent / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    text = mlmodel.read_text()
    mlmodel.write_text(
        text.replace("serialization_format: skops", "serialization_format: pickle").replace(
            "pickled_model: model.skops", "pickled_model: model.pkl"
        )
    )
    with pytest.raises(ModelRefused, match="pickle format can run code"):
        load_version(client, model_version)
    # MLflow's own loader, in a process with loopml's environment, refuses as well.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import mlflow; mlflow.sklearn.load_model('models:/faults/{registered.version}')",
        ],
        env={**os.environ, **mlflow_environment(), "MLFLOW_TRACKING_URI": mlflow_on_postgres.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode != 0 and "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in loaded.stderr
    assert not marker.exists()

    # Same format, other bytes: the hash recorded at registration no longer matches.
    mlmodel.write_text(text)
    model_file = mlmodel.parent / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(ModelRefused, match="does not match the file registered"):
        load_version(client, model_version)


def test_dead_tracking_server_fails_train_fast_and_a_torn_ledger_keeps_status(
    tmp_path, loopml_home, prefect_api
):
    directory = tmp_path / "project"
    directory.mkdir()
    import pandas as pd

    data = tmp_path / "sample.csv"
    pd.read_csv(SAMPLE).head(200).to_csv(data, index=False)
    init_project(data, "churn", "faults", directory)
    ledger.append_entry(loopml_home / "ledger", "faults", {"action": "promoted", "version": "1"})
    with open(ledger.ledger_path(loopml_home / "ledger", "faults"), "a") as handle:
        handle.write('{"action": "refused", "vers')
    status = run_cli("status", "faults", "--json", cwd=directory)
    assert status.returncode == 0, status.stderr
    assert "skipped torn line 2" in status.stderr

    # The retry budget bounds what MLflow costs; measured in-process (CLI start-up on a loaded
    # CI machine is not MLflow's), then the CLI must fail with one line.
    dead_url = f"http://127.0.0.1:{free_port()}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in mlflow_environment().items():
            patch.setenv(key, value)
        patch.setenv("MLFLOW_TRACKING_URI", dead_url)
        started = time.monotonic()
        with pytest.raises(RegistryError, match="MLflow at http://127.0.0.1"):
            open_runtime("faults", directory)
        elapsed = time.monotonic() - started
    assert elapsed < 30, f"a dead tracking server took {elapsed:.1f} s to fail"

    dead = run_cli(
        "train",
        "faults",
        "--trials",
        "1",
        cwd=directory,
        env={"MLFLOW_TRACKING_URI": dead_url},
        timeout=300,
    )
    assert dead.returncode != 0
    errors = [line for line in dead.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "MLflow at http://127.0.0.1" in errors[0], dead.stderr[-2000:]
