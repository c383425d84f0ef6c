"""The same CLI and flows, unchanged, against real engines: Prefect and MLflow servers on
PostgreSQL (MLflow with proxied artifacts), Optuna studies in PostgreSQL and a two-worker
Dask cluster reached by address, as docker-compose runs them."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import SAMPLE, last_json
from tests.scaleout.conftest import run_loopml

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

PROJECT = "telco"
TRIALS = 8
SHARDS = 2


@pytest.fixture(scope="module")
def project_dir(engines, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
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
        env=engines.env,
    )
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def trained(engines, project_dir) -> dict:
    result = run_loopml(
        "train", PROJECT, "--trials", str(TRIALS), "--json", cwd=project_dir, env=engines.env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return last_json(result.stdout)


def test_version_registered_on_the_mlflow_server(engines, trained, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=engines.mlflow.url, registry_uri=engines.mlflow.url)
    champion = client.get_model_version_by_alias(PROJECT, "champion")
    assert trained["promoted"] is True
    assert champion.version == trained["version"]
    # Promotion moved the version from challenger to champion.
    assert client.get_registered_model(PROJECT).aliases == {"champion": trained["version"]}
    assert champion.tags["loopml.training_data_hash"]
    assert champion.tags["loopml.suite_hash"]
    assert float(champion.tags["loopml.test_roc_auc"]) > 0.75
    assert champion.tags["loopml.parent_version"] == "none"

    # Artifacts went through the server (proxied), not to a path the client wrote itself.
    run = client.get_run(trained["run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any(engines.artifacts_dir.rglob("train.parquet"))
    downloaded = Path(client.download_artifacts(trained["run_id"], "reference", str(tmp_path)))
    reference = pd.read_parquet(downloaded / "train.parquet")
    assert len(reference) == int(champion.tags["loopml.training_rows"])

    import mlflow.sklearn

    monkeypatch.setenv("MLFLOW_TRACKING_URI", engines.mlflow.url)
    model = mlflow.sklearn.load_model(f"models:/{PROJECT}@champion")
    rows = pd.read_csv(SAMPLE, nrows=50).drop(columns=["churn"])
    assert model.predict_proba(rows).shape == (50, 2)

    # The tracking store is the PostgreSQL database, not a file next to the client.
    versions = engines.postgres.query(
        engines.mlflow_database,
        "select version from model_versions where name = %s",
        (PROJECT,),
    )
    assert [str(row[0]) for row in versions] == [trained["version"]]


def test_search_shards_share_one_study_in_postgres(engines, trained):
    import optuna

    summaries = optuna.get_all_study_summaries(engines.optuna_storage)
    assert len(summaries) == 1
    study = optuna.load_study(study_name=summaries[0].study_name, storage=engines.optuna_storage)
    finished = [trial for trial in study.trials if trial.state.is_finished()]
    # One shared budget: the shards top the study up to TRIALS (each may finish one trial it
    # started before it saw the total reached), not TRIALS each.
    assert TRIALS <= len(finished) <= TRIALS + SHARDS - 1
    assert trained["trials"] == len(finished)

    processes = {
        key.removeprefix("loopml.process."): value
        for key, value in study.user_attrs.items()
        if key.startswith("loopml.process.")
    }
    shards = {name: value for name, value in processes.items() if name.startswith("shard-")}
    assert len(shards) == SHARDS
    assert all(shard["trials"] for shard in shards.values()), shards
    shard_pids = {shard["pid"] for shard in shards.values()}
    assert len(shard_pids) == SHARDS
    assert processes["start"]["pid"] not in shard_pids  # the flow process is not a worker
    ran = sorted(number for value in processes.values() for number in value["trials"])
    assert ran == sorted(trial.number for trial in finished)

    # The shards really ran at the same time: trials of different workers overlap.
    owner = {number: name for name, value in shards.items() for number in value["trials"]}
    spans = [
        (trial.datetime_start, trial.datetime_complete, owner[trial.number])
        for trial in finished
        if trial.number in owner
    ]
    assert any(
        start_a < end_b and start_b < end_a and owner_a != owner_b
        for start_a, end_a, owner_a in spans
        for start_b, end_b, owner_b in spans
    )


def test_flow_and_task_runs_recorded_in_the_postgres_prefect_server(engines, trained):
    rows = engines.postgres.query(
        engines.prefect_database,
        "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id",
    )
    assert ("train", "COMPLETED") in rows
    tasks = engines.postgres.query(
        engines.prefect_database,
        "select t.name, t.state_type from task_run t join flow_run r on r.id = t.flow_run_id "
        "join flow f on f.id = r.flow_id where f.name = 'train'",
    )
    shard_states = [state for name, state in tasks if name.startswith("search-shard")]
    assert shard_states == ["COMPLETED"] * SHARDS
    assert [state for name, state in tasks if name.startswith("search-collect")] == ["COMPLETED"]

    # ... and the server answers for them through its API.
    request = urllib.request.Request(
        f"{engines.prefect.api_url}/flow_runs/filter",
        data=json.dumps({"flows": {"name": {"any_": ["train"]}}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = json.load(response)
    assert [run["state_type"] for run in runs] == ["COMPLETED"]


def test_partitioned_scoring_matches_one_pass_and_logs_once(
    engines, trained, project_dir, tmp_path
):
    from loopml.scoring import PredictionLog

    sample = pd.read_csv(SAMPLE).drop(columns=["churn"])
    batch = pd.concat([sample] * 15, ignore_index=True)  # ~106k rows: two partitions
    batch_file = tmp_path / "batch.csv"
    batch.to_csv(batch_file, index=False)

    parallel = run_loopml(
        "score",
        PROJECT,
        "--data",
        str(batch_file),
        "--out",
        str(tmp_path / "parallel.csv"),
        "--json",
        cwd=project_dir,
        env=engines.env,
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    first = last_json(parallel.stdout)
    assert first["rows"] == len(batch)
    assert first["partitions"] == 2
    assert first["logged"] is True
    assert first["model_version"] == trained["version"]

    one_pass_env = {**engines.env, "LOOPML_DASK_ADDRESS": ""}
    one_pass = run_loopml(
        "score",
        PROJECT,
        "--data",
        str(batch_file),
        "--out",
        str(tmp_path / "one_pass.csv"),
        "--json",
        cwd=project_dir,
        env=one_pass_env,
    )
    assert one_pass.returncode == 0, one_pass.stderr[-3000:]
    second = last_json(one_pass.stdout)
    assert second["batch_id"] == first["batch_id"]
    assert second["logged"] is False  # same content: not logged twice

    partitioned = pd.read_csv(tmp_path / "parallel.csv")
    pd.testing.assert_frame_equal(partitioned, pd.read_csv(tmp_path / "one_pass.csv"))
    assert partitioned["row_id"].tolist() == [
        f"{first['batch_id']}-{number}" for number in range(len(batch))
    ]

    log = PredictionLog(engines.home / "predictions", PROJECT)
    assert log.batches() == [first["batch_id"]]
    assert len(log.read(columns=["row_id"])) == len(batch)
    assert not list((engines.home / "predictions" / ".partitions").glob("*"))


def test_monitoring_verdict_and_report(engines, trained, project_dir, tmp_path):
    drifted = pd.read_csv(SAMPLE).sample(2000, random_state=1)
    drifted["monthly_charges"] = drifted["monthly_charges"] * 1.6 + 20
    drifted["tenure"] = (drifted["tenure"] * 0.3).round()
    drifted["contract"] = "Month-to-month"
    batch_file = tmp_path / "drifted.csv"
    drifted.to_csv(batch_file, index=False)

    result = run_loopml(
        "monitor", PROJECT, "--data", str(batch_file), "--json", cwd=project_dir, env=engines.env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = last_json(result.stdout)
    assert verdict["drift_detected"] is True
    assert {"monthly_charges", "tenure", "contract"} <= set(verdict["drifted_columns"])
    assert verdict["performance"]  # the batch carries its labels
    report = Path(verdict["report_path"])
    assert report.is_file() and "<html" in report.read_text(errors="ignore")[:5000].lower()

    # The drift event reached the PostgreSQL-backed Prefect server (persisted in batches).
    deadline = time.monotonic() + 60
    while True:
        events = engines.postgres.query(
            engines.prefect_database,
            "select resource_id from events where event = 'loopml.drift.detected'",
        )
        if events or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert (f"loopml.project.{PROJECT}",) in events
