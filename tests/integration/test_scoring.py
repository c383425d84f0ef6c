"""Batch scoring and late labels, for real: a trained champion in MLflow (SQLite), flows run
against the session's Prefect server, the prediction log under LOOPML_HOME.

What a user checks: the output file, the prediction log that monitoring relies on, that the
same batch is never logged twice, that chunked scoring changes nothing, that bad batches are
quarantined (with the event) instead of scored, and that labels give per-version performance.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from loopml.config import load_config
from loopml.data import file_hash
from loopml.errors import DataError, ValidationFailed
from loopml.features import prepare_features
from loopml.validation import describe_failures
from tests.conftest import run_cli
from tests.integration.maintenance_fixtures import (
    MaintainedProject,
    maintained_project,
    read_artifacts,
)

NAME = "score_telco"
OUTPUT_COLUMNS = ["row_id", "prediction", "probability", "model_version"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("scoring"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


@pytest.fixture(scope="module")
def scored(project):
    """One 400-row batch (no target) scored with ``loopml score``'s flow."""
    from flows.scoring import score_flow

    truth = project.batch(400, seed=11, with_target=True)
    source = project.write(truth.drop(columns="churn"), "batch-400.csv")
    out = project.batches_dir / "predictions-400.csv"
    result = score_flow(
        project=NAME, data=str(source), out=str(out), project_dir=str(project.project_dir)
    )
    return {"truth": truth, "source": source, "out": out, "result": result}


def _score(project: MaintainedProject, source: Path, out: Path) -> dict:
    from flows.scoring import score_flow

    return score_flow(
        project=NAME, data=str(source), out=str(out), project_dir=str(project.project_dir)
    )


def test_output_file_names_row_prediction_probability_and_version(project, scored):
    champion = project.champion()
    result, output = scored["result"], pd.read_csv(scored["out"])

    assert result["rows"] == 400 and result["logged"] is True
    assert result["model_version"] == str(champion.version)
    assert list(output.columns) == OUTPUT_COLUMNS
    assert len(output) == 400 and output["row_id"].is_unique
    assert set(output["model_version"].astype(str)) == {str(champion.version)}
    assert set(output["prediction"]) <= {"Yes", "No"}
    assert output["probability"].between(0, 1).all()
    # The probability is the champion's own P(churn = Yes) for each input row, in order...
    model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
    features = prepare_features(scored["truth"], load_config(NAME, project.project_dir))
    expected = model.predict_proba(features)[:, list(model.classes_).index("Yes")]
    np.testing.assert_allclose(output["probability"].to_numpy(), expected, rtol=1e-9)
    # ... and the label is that probability cut at the version's tuned threshold.
    threshold = float(champion.tags["loopml.threshold"])
    assert ((output["probability"] >= threshold) == (output["prediction"] == "Yes")).all()
    assert 0 < (output["prediction"] == "Yes").sum() < 400


def test_the_champion_through_mlflow_pyfunc_predicts_what_loopml_score_writes(project, scored):
    """The decision threshold lives inside the registered artifact, and its signature takes the
    table as read from its CSV (Telco's integer columns stay int64): what `mlflow models serve`
    runs gives every row the label `loopml score` wrote."""
    import mlflow.pyfunc

    batch = pd.read_csv(scored["source"])
    integer_columns = ["tenure", "senior_citizen", "female"]
    assert all(batch[column].dtype.kind == "i" for column in integer_columns)
    written = pd.read_csv(scored["out"])

    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(batch)

    assert list(np.asarray(served)) == list(written["prediction"])
    # Not the 0.5 cut of a bare pipeline: the tuned threshold decides some rows.
    champion = project.champion()
    threshold = float(champion.tags["loopml.threshold"])
    assert threshold != 0.5
    logged = float(mlflow.get_run(champion.run_id).data.params["threshold"])
    assert logged == pytest.approx(threshold, rel=1e-5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_what_loopml_score_writes(project, scored, tmp_path):
    """The same through `mlflow models serve` (a real server process, /invocations)."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scripts = Path(sys.executable).parent  # mlflow starts uvicorn from PATH
    command = [str(scripts / "mlflow"), "models", "serve"]
    command += ["-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally
    environment = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        command, stdout=log, stderr=log, env=environment, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not come up"
            time.sleep(1)
        batch = pd.read_csv(scored["source"])
        body = {"dataframe_split": json.loads(batch.to_json(orient="split", index=False))}

        response = httpx.post(f"{url}/invocations", json=body, timeout=60)

        assert response.status_code == 200, response.text
        written = pd.read_csv(scored["out"])["prediction"]
        assert response.json()["predictions"] == list(written)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()


def test_an_integer_column_with_nulls_is_scored_by_loopml_and_refused_by_pyfunc(project):
    """A later batch whose integer column holds a null reads as float64: `loopml score` scores
    it (the pipeline imputes), while the signature (long) makes pyfunc refuse it with MLflow's
    own hint rather than cast silently."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    frame = project.batch(50, seed=21)
    frame.loc[3, "tenure"] = np.nan
    source = project.write(frame, "batch-null-tenure.csv")
    out = project.batches_dir / "predictions-null-tenure.csv"

    result = _score(project, source, out)

    assert result["rows"] == 50
    assert pd.read_csv(out)["prediction"].notna().all()
    with pytest.raises(MlflowException, match="tenure"):
        mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(pd.read_csv(source))


def test_prediction_log_holds_rows_with_features_batch_and_time(project, scored):
    result = scored["result"]
    log = project.prediction_log()
    assert (project.home / "predictions" / NAME).is_dir()
    assert log.has_batch(result["batch_id"])

    logged = log.read()
    rows = logged[logged["batch_id"] == result["batch_id"]]
    output = pd.read_csv(scored["out"])
    assert len(rows) == 400
    assert list(rows["row_id"]) == list(output["row_id"])
    np.testing.assert_allclose(rows["probability"].to_numpy(), output["probability"].to_numpy())
    assert set(rows["model_version"].astype(str)) == {result["model_version"]}
    features = scored["truth"].drop(columns="churn")
    for column in ("tenure", "monthly_charges", "contract", "payment_method"):
        assert column in rows.columns
    np.testing.assert_allclose(rows["monthly_charges"].to_numpy(), features["monthly_charges"])
    assert list(rows["contract"]) == list(features["contract"])
    scored_at = pd.to_datetime(rows["scored_at"], utc=True)
    assert scored_at.notna().all() and scored_at.nunique() == 1
    assert abs(pd.Timestamp.now(tz="UTC") - scored_at.iloc[0]) < pd.Timedelta(hours=1)


def test_rescoring_the_same_file_does_not_duplicate_log_rows(project, scored):
    batch_id = scored["result"]["batch_id"]
    again_out = project.batches_dir / "predictions-400-again.csv"

    again = _score(project, scored["source"], again_out)

    assert again["batch_id"] == batch_id
    assert again["logged"] is False
    logged = project.prediction_log().read()
    assert (logged["batch_id"] == batch_id).sum() == 400
    assert logged["row_id"].is_unique
    # The user still gets the predictions, identical to the first time.
    pd.testing.assert_frame_equal(pd.read_csv(again_out), pd.read_csv(scored["out"]))


def test_scoring_in_chunks_gives_the_same_predictions_as_one_chunk(project):
    from tasks.scoring import load_champion, score_file

    frame = project.batch(1_000, seed=12)
    source = project.write(frame, "batch-1000.csv")
    runtime = project.runtime()
    serving = load_champion(runtime)
    chunked_out = project.batches_dir / "chunked.parquet"
    whole_out = project.batches_dir / "whole.csv"

    chunked = score_file(
        runtime, serving, source, batch_id="chunked-1000", out=chunked_out, chunk_rows=137
    )
    whole = score_file(
        runtime, serving, source, batch_id="chunked-1000", out=whole_out, chunk_rows=10_000
    )

    assert chunked["rows"] == whole["rows"] == 1_000
    in_chunks, in_one = pd.read_parquet(chunked_out), pd.read_csv(whole_out)
    assert list(in_chunks.columns) == OUTPUT_COLUMNS
    assert list(in_chunks["row_id"]) == list(in_one["row_id"])
    assert in_chunks["row_id"].is_unique
    assert list(in_chunks["prediction"]) == list(in_one["prediction"])
    np.testing.assert_allclose(in_chunks["probability"], in_one["probability"], rtol=1e-12)
    assert list(in_chunks["model_version"].astype(str)) == list(in_one["model_version"].astype(str))
    # The chunked run logged the batch (all 1,000 rows, once); the second one did not.
    assert chunked["logged"] is True and whole["logged"] is False
    logged = project.prediction_log().read()
    rows = logged[logged["batch_id"] == "chunked-1000"]
    assert list(rows["row_id"]) == list(in_chunks["row_id"])


def test_batch_missing_a_column_is_quarantined_not_scored(project):
    from loopml import events

    frame = project.batch(300, seed=13).drop(columns="contract")
    source = project.write(frame, "missing-contract.csv")
    out = project.batches_dir / "missing-contract-predictions.csv"
    batch_id = "b" + file_hash(source)
    batches_before = project.prediction_log().batches()

    with pytest.raises(ValidationFailed) as failure:
        _score(project, source, out)

    assert "contract" in str(failure.value)
    folder = project.home / "quarantine" / NAME / batch_id
    assert Path(failure.value.quarantine_path) == folder
    assert (folder / source.name).read_bytes() == source.read_bytes()
    validation = (folder / "validation.json").read_text()
    assert '"success": false' in validation and "contract" in validation
    assert not out.exists()
    assert project.prediction_log().batches() == batches_before
    event = project.wait_for_event(
        events.DATA_QUARANTINED, where=lambda e: e["payload"].get("batch_id") == batch_id
    )
    assert event["resource"]["prefect.resource.id"] == f"loopml.project.{NAME}"
    assert event["payload"]["quarantine_path"] == str(folder)
    assert any("contract" in line for line in event["payload"]["failures"])
    assert read_artifacts(project.api_url, f"{NAME}-quarantine".replace("_", "-"))


def _header_only(project: MaintainedProject) -> Path:
    source = project.batches_dir / "header-only.csv"
    source.write_text(",".join(project.batch(5, seed=14).columns) + "\n")
    return source


def test_header_only_batch_is_a_clear_error(project):
    source = _header_only(project)
    out = project.batches_dir / "header-only-predictions.csv"
    batches_before = project.prediction_log().batches()

    with pytest.raises(DataError, match="the batch has no rows") as failure:
        _score(project, source, out)

    assert str(source) in str(failure.value)
    assert not out.exists()
    assert project.prediction_log().batches() == batches_before
    assert not (project.home / "quarantine" / NAME / ("b" + file_hash(source))).exists()


@pytest.mark.slow
def test_cli_score_of_a_header_only_batch_is_a_one_line_error(project):
    source = _header_only(project)
    out = project.batches_dir / "header-only-predictions.csv"

    completed = run_cli(
        "score", NAME, "--data", str(source), "--out", str(out), "--json", cwd=project.project_dir
    )

    assert completed.returncode != 0
    assert not out.exists()
    error_lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert error_lines[-1].startswith("loopml: error:") and "no rows" in error_lines[-1]
    assert len(error_lines) == 1, completed.stderr


def test_unseen_categories_in_a_few_rows_are_scored(project):
    frame = project.batch(300, seed=15)
    frame.loc[[3, 150], "payment_method"] = "Crypto wallet"
    source = project.write(frame, "two-new-categories.csv")
    out = project.batches_dir / "two-new-categories-predictions.csv"

    result = _score(project, source, out)

    output = pd.read_csv(out)
    assert result["rows"] == 300 and len(output) == 300
    assert output["probability"].between(0, 1).all()
    assert output.loc[[3, 150], "prediction"].isin(["Yes", "No"]).all()


def test_unseen_categories_in_most_rows_are_quarantined(project):
    frame = project.batch(300, seed=16)
    frame.loc[frame.index[:200], "payment_method"] = "Crypto wallet"
    source = project.write(frame, "mostly-new-categories.csv")
    out = project.batches_dir / "mostly-new-categories-predictions.csv"
    batch_id = "b" + file_hash(source)

    with pytest.raises(ValidationFailed) as failure:
        _score(project, source, out)

    lines = describe_failures(failure.value.result)
    assert any("payment_method" in line for line in lines), lines
    assert "payment_method" in str(failure.value)
    assert (project.home / "quarantine" / NAME / batch_id / source.name).is_file()
    assert not project.prediction_log().has_batch(batch_id)
    assert not out.exists()


def test_labels_give_performance_per_model_version(project, scored):
    from flows.labels import label_flow

    output = pd.read_csv(scored["out"])
    labels = pd.DataFrame({"row_id": output["row_id"], "churn": scored["truth"]["churn"]})
    labels_path = project.write(labels, "labels-400.csv")
    version = scored["result"]["model_version"]

    result = label_flow(project=NAME, data=str(labels_path), project_dir=str(project.project_dir))

    assert result["labels"] == 400
    by_version = result["performance_by_version"]
    assert set(by_version) == {version}
    assert by_version[version]["rows"] == 400
    expected_auc = roc_auc_score(labels["churn"] == "Yes", output["probability"])
    assert by_version[version]["metrics"]["roc_auc"] == pytest.approx(expected_auc)
    assert by_version[version]["metrics"]["roc_auc"] > 0.75  # the champion is a real model
    verdict = result["champion_verdict"]
    assert verdict["metric"] == "roc_auc" and verdict["rows"] == 400
    assert verdict["degraded"] is False
    stored = project.label_store().labels()
    assert set(stored["row_id"]) == set(output["row_id"])
    artifact = read_artifacts(project.api_url, f"{NAME}-performance-by-version".replace("_", "-"))
    assert artifact and artifact[0]["type"] == "table"


def test_labels_for_unknown_row_ids_are_refused_and_nothing_is_stored(project, scored):
    from flows.labels import label_flow

    output = pd.read_csv(scored["out"])
    labels = pd.DataFrame(
        {
            "row_id": [*output["row_id"].head(5), "never-scored-1", "never-scored-2"],
            "churn": ["Yes", "No", "No", "Yes", "No", "Yes", "No"],
        }
    )
    labels_path = project.write(labels, "labels-unknown.csv")
    label_files = sorted((project.home / "labels").rglob("*"))

    with pytest.raises(DataError, match="never scored") as failure:
        label_flow(project=NAME, data=str(labels_path), project_dir=str(project.project_dir))

    assert "2 of 7 row ids" in str(failure.value)
    assert "nothing was stored" in str(failure.value)
    assert sorted((project.home / "labels").rglob("*")) == label_files
