"""``loopml demo`` as a newcomer runs it: from nothing to a retraining started by an event.

A short stream (one clean batch, one drifting batch, few trials) keeps it to a minute or two;
the full demo is timed in benchmarks/run. The command runs in a subprocess on free ports with a
fresh LOOPML_HOME and no PREFECT_API_URL or MLFLOW_TRACKING_URI: the embedded default. What it
did is read back from its JSON result, the MLflow registry it left behind, the ledger and the
Prefect server's database (the stack is stopped when the demo ends).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess

import pytest

from tests.conftest import BIN, free_port, last_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The embedded default: no server the test session (or the developer's shell) points at.
SERVER_VARIABLES = {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LOOPML_HOME"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("demo-home")
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
    env["LOOPML_HOME"] = str(home)
    ports = [str(free_port()) for _ in range(3)]
    completed = subprocess.run(
        [
            str(BIN / "loopml"), "demo",
            "--clean", "1",
            "--drifting", "1",
            "--trials", "3",
            "--prefect-port", ports[0],
            "--mlflow-port", ports[1],
            "--evidently-port", ports[2],
            "--json",
        ],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    return {"home": home, "result": last_json(completed.stdout), "stderr": completed.stderr}


def test_the_drifting_batch_is_flagged_and_the_clean_one_is_not(demo):
    batches = demo["result"]["batches"]

    assert [(b["kind"], b["drift"]) for b in batches] == [("clean", False), ("drifting", True)]
    assert all(b["model_version"] == "1" for b in batches)


def test_the_automation_retrained_once_and_the_gate_decided(demo):
    retrainings = demo["result"]["retrainings"]

    assert len(retrainings) == 1
    decision = retrainings[0]
    assert decision["action"] in {"promoted", "refused"}
    assert decision["version"] == "2"
    ledger = [
        json.loads(line)
        for line in (demo["home"] / "ledger" / "telco.jsonl").read_text().splitlines()
    ]
    started = [entry for entry in ledger if entry["action"] == "retrain_started"]
    assert len(started) == 1
    assert started[0]["trigger"]["kind"] == "event"
    assert started[0]["batch_id"] == demo["result"]["batches"][1]["batch_id"]


def test_the_registry_holds_both_versions_with_the_aliases_the_gate_set(demo):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{demo['home'] / 'mlflow.db'}")
    versions = {str(v.version) for v in client.search_model_versions("name = 'telco'")}
    champion = str(client.get_model_version_by_alias("telco", "champion").version)

    assert versions == {"1", "2"}
    promoted = demo["result"]["retrainings"][0]["action"] == "promoted"
    assert champion == ("2" if promoted else "1")


def test_no_flow_run_was_cut_short_when_the_demo_stopped(demo):
    """The demo waits for the retraining to finish before it stops the stack: no Crashed run."""
    with sqlite3.connect(demo["home"] / "prefect" / "prefect.db") as database:
        states = database.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run "
            "JOIN flow ON flow.id = flow_run.flow_id"
        ).fetchall()

    assert ("retrain", "COMPLETED") in states
    assert [state for state in states if state[1] in {"CRASHED", "FAILED"}] == []


def test_progress_is_shown_with_the_time_and_the_urls_at_the_end(demo):
    stderr = demo["stderr"]

    assert "[demo] dropped batch-02-drifting.csv" in stderr
    assert "s [demo] champion v1" in stderr  # each progress line starts with the elapsed time
    assert set(demo["result"]["urls"]) == {"prefect_ui_url", "mlflow_url", "evidently_url"}
