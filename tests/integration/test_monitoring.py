"""Monitoring, for real: Evidently reports and workspace, drift verdicts, performance against the
champion's held-out metrics, and the Prefect events and artifacts the automations react to.

Batches come from the part of the Telco table the champion never saw. "Clean" batches are plain
samples of it; the shifted batch has prices up 30 %, much shorter tenures and mostly
month-to-month contracts; the flipped batch keeps the features but inverts the churn labels.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from loopml import events
from loopml.features import prepare_features
from tests.conftest import init_project, last_json, run_cli
from tests.integration.maintenance_fixtures import (
    MaintainedProject,
    maintained_project,
    read_artifacts,
    shifted_batch,
)

NAME = "monitor_telco"
SHIFTED_COLUMNS = {"monthly_charges", "tenure", "contract"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("monitoring"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


def _monitor(project: MaintainedProject, source: Path, reference: Path | None = None) -> dict:
    from flows.monitoring import monitor_flow

    return monitor_flow(
        project=NAME,
        data=str(source),
        reference=None if reference is None else str(reference),
        project_dir=str(project.project_dir),
    )


@pytest.fixture(scope="module")
def shifted(project) -> dict:
    """A shifted 300-row batch (no target), monitored once."""
    frame = shifted_batch(project.batch(300, seed=31), seed=31)
    source = project.write(frame, "shifted.csv")
    return {"frame": frame, "source": source, "result": _monitor(project, source)}


@pytest.mark.slow
def test_clean_batches_from_the_same_data_show_no_drift(project):
    results = []
    for seed in range(21, 26):
        source = project.write(project.batch(300, seed=seed), f"clean-{seed}.csv")
        results.append(_monitor(project, source))

    drifted = [(r["batch_id"], r["drifted_columns"]) for r in results if r["drift_detected"]]
    assert drifted == []
    assert [r["status"] for r in results] == ["no_drift"] * 5
    assert all(r["rows"] == 300 and r["performance"] is None for r in results)
    assert all(Path(r["report_path"]).is_file() for r in results)


def test_shifted_batch_is_flagged_with_the_shifted_columns(project, shifted):
    result = shifted["result"]

    assert result["drift_detected"] is True
    assert result["status"] == "drift"
    assert set(result["drifted_columns"]) >= SHIFTED_COLUMNS, result["drifted_columns"]
    assert result["drift_share"] >= len(SHIFTED_COLUMNS) / 19
    assert result["rows"] == 300
    assert result["model_version"] == str(project.champion().version)
    # Shorter tenures and monthly contracts are what churners look like: outputs move too.
    assert result["prediction_drift"]["drifted"] is True
    assert result["prediction_drift"]["current_mean"] > result["prediction_drift"]["reference_mean"]


def test_html_report_is_written_and_names_the_columns(project, shifted):
    report = Path(shifted["result"]["report_path"])

    assert report.is_file() and report.suffix == ".html"
    assert report.parent == project.home / "reports" / NAME
    assert shifted["result"]["batch_id"] in report.name
    html = report.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "Data Drift Summary" in html  # Evidently's DataDriftPreset widgets
    assert "Wasserstein distance (normed)" in html  # Evidently's own per-column tests
    for column in SHIFTED_COLUMNS:
        assert f'"column_name": "{column}"' in html


def test_html_report_agrees_with_the_drift_verdict(project, shifted):
    """A person opening the report of a batch loopml flagged must not read 'NOT detected'."""
    html = Path(shifted["result"]["report_path"]).read_text(encoding="utf-8")
    drift_share = project.runtime().config.monitoring.drift.drift_share

    assert "Dataset Drift is NOT detected" not in html
    assert "Dataset Drift is detected" in html
    assert f"Dataset drift detection threshold is {drift_share}" in html


def test_evidently_workspace_has_the_project_and_the_run(project, shifted):
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(project.home / "evidently"))
    projects = workspace.search_project(NAME)

    assert len(projects) == 1
    runs = {str(run) for run in workspace.list_runs(projects[0].id)}
    assert shifted["result"]["evidently_run"] in runs


def test_monitoring_verdict_is_a_prefect_markdown_artifact(project, shifted):
    batch_id = shifted["result"]["batch_id"]

    artifacts = read_artifacts(project.api_url, "monitor-telco-monitoring")

    mine = [a for a in artifacts if batch_id in (a.get("data") or "")]
    assert mine, [a.get("description") for a in artifacts]
    assert mine[0]["type"] == "markdown"
    assert "DRIFT DETECTED" in mine[0]["data"]
    assert "monthly_charges" in mine[0]["data"]


def test_drift_event_reaches_the_prefect_api(project, shifted):
    result = shifted["result"]

    event = project.wait_for_event(
        events.DRIFT_DETECTED, where=lambda e: e["payload"].get("batch_id") == result["batch_id"]
    )

    assert event["event"] == "loopml.drift.detected"
    assert event["resource"]["prefect.resource.id"] == f"loopml.project.{NAME}"
    payload = event["payload"]
    assert payload["drift_share"] == pytest.approx(result["drift_share"])
    assert payload["drifted_columns"] == result["drifted_columns"]
    assert payload["model_version"] == result["model_version"]


def test_one_verdict_line_in_the_artifact_the_event_and_the_evidently_snapshot(project, shifted):
    """The rule that fired reads the same in every UI (issue 14: three verdicts for one batch)."""
    from evidently.ui.workspace import Workspace

    result = shifted["result"]
    reason = result["reason"]
    policy = project.runtime().config.monitoring.drift
    assert ">=" in reason and (
        f"drift share {result['drift_share']:.2f} >= {policy.drift_share:.2f}" in reason
        or f">= {policy.weighted_drift_share:.2f}" in reason
    ), reason

    artifacts = read_artifacts(project.api_url, "monitor-telco-monitoring")
    mine = [a for a in artifacts if result["batch_id"] in (a.get("data") or "")]
    assert reason in mine[0]["data"]
    event = project.wait_for_event(
        events.DRIFT_DETECTED, where=lambda e: e["payload"].get("batch_id") == result["batch_id"]
    )
    assert event["payload"]["reason"] == reason

    workspace = Workspace(str(project.home / "evidently"))
    evidently_project = workspace.search_project(NAME)[0]
    snapshot = workspace.get_run(evidently_project.id, result["evidently_run"])
    assert snapshot.metadata["loopml_verdict"] == reason
    assert f"batch:{result['batch_id']}" in snapshot.tags
    assert f"model:v{result['model_version']}" in snapshot.tags
    assert "verdict:drift" in snapshot.tags or "verdict:drift+estimated-degraded" in snapshot.tags


def test_evidently_snapshot_carries_the_estimated_performance(project, shifted):
    """The dashboard's estimated panel plots what ``loopml monitor --json`` reports."""
    from evidently.ui.workspace import Workspace

    result = shifted["result"]
    assert result["estimated_roc_auc"] is not None, result.get("estimated_performance")
    workspace = Workspace(str(project.home / "evidently"))
    snapshot = workspace.get_run(workspace.search_project(NAME)[0].id, result["evidently_run"])

    means = {}
    for metric in snapshot.dict()["metric_results"].values():
        params = metric["metric_value_location"]["metric"]["params"]
        if params["type"].endswith(":MeanValue"):
            means[params["column"]] = metric["value"]
    for key in ("estimated_roc_auc", "estimated_roc_auc_lower", "estimated_roc_auc_upper"):
        if result[key] is not None:
            assert means[key] == pytest.approx(result[key]), key


def test_evidently_project_has_its_dashboard_panels_once(project, shifted):
    from evidently.ui.workspace import Workspace

    _monitor(project, project.write(project.batch(300, seed=27), "clean-27.csv"))
    workspace = Workspace(str(project.home / "evidently"))
    dashboard = workspace.search_project(NAME)[0].dashboard.model()
    titles = [panel.title for panel in dashboard.panels]

    assert titles == [
        "Drift share",
        "Weighted drift share",
        "Drifted columns",
        "Prediction drift",
        "Performance: roc_auc",
        "Performance: roc_auc (estimated)",
    ], titles


def test_labelled_report_compares_performance_with_the_held_out_split(project):
    """Evidently's performance reference is the rows loopml's verdict compares with."""
    from evidently.ui.workspace import Workspace

    source = project.write(project.batch(300, seed=43, with_target=True), "labelled-43.csv")
    result = _monitor(project, source)

    workspace = Workspace(str(project.home / "evidently"))
    snapshot = workspace.get_run(workspace.search_project(NAME)[0].id, result["evidently_run"])
    assert snapshot.metadata["performance_reference"] == "held-out split"
    assert snapshot.metadata["loopml_verdict"] == result["reason"]


def test_labelled_batch_is_judged_against_the_champions_held_out_metrics(project):
    frame = project.batch(300, seed=41, with_target=True)
    source = project.write(frame, "labelled-clean.csv")

    result = _monitor(project, source)

    performance = result["performance"]
    assert performance is not None and performance["metric"] == "roc_auc"
    assert performance["rows"] == 300
    held_out = project.train_result["test_metrics"]["roc_auc"]
    assert performance["reference"]["roc_auc"] == pytest.approx(held_out, abs=1e-5)
    model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
    probabilities = model.predict_proba(prepare_features(frame, project.runtime().config))
    expected = roc_auc_score(frame["churn"] == "Yes", probabilities[:, 1])
    assert list(model.classes_) == ["No", "Yes"]
    assert performance["current"]["roc_auc"] == pytest.approx(expected)
    assert performance["drop"] == pytest.approx(held_out - expected, abs=1e-5)
    assert performance["degraded"] is False and result["performance_degraded"] is False
    assert result["drift_detected"] is False
    # The labelled rows are kept for the next retraining.
    assert result["labelled_rows_kept"] == 300
    kept = pd.read_parquet(
        project.home / "labels" / NAME / "batches" / f"batch={result['batch_id']}.parquet"
    )
    assert len(kept) == 300 and list(kept["churn"]) == list(frame["churn"])


def test_a_one_class_labelled_batch_reports_drift_and_says_the_metric_is_undefined(project):
    frame = shifted_batch(project.batch(300, seed=47, with_target=True), seed=47)
    source = project.write(frame.assign(churn="No"), "one-class.csv")

    result = _monitor(project, source)

    assert result["drift_detected"] is True
    assert SHIFTED_COLUMNS & set(result["drifted_columns"])
    assert result["performance"]["note"] == "roc_auc is not defined on this batch"
    assert result["performance_degraded"] is False


def test_a_column_of_only_unseen_categories_is_drift(project):
    frame = project.batch(300, seed=53).assign(contract="Lifetime")
    source = project.write(frame, "unseen-contract.csv")

    result = _monitor(project, source)

    assert result["drift_detected"] is True
    assert "contract" in result["drifted_columns"]
    assert "contract: 100% of rows in categories the reference never had" in result["reason"]


def test_numbers_that_arrive_as_text_drift_their_column_and_the_report_is_written(project):
    """Every value of a numeric column unparseable: loopml judges the column on its missing
    share (drifted), and Evidently, which refuses an empty column, reports the others."""
    frame = project.batch(300, seed=57)
    frame["monthly_charges"] = "n/a"
    source = project.write(frame, "charges-as-text.csv")

    result = _monitor(project, source)

    charges = result["columns"]["monthly_charges"]
    assert charges["drifted"] is True and charges["method"] == "null-rate+chisquare"
    assert "monthly_charges" in result["drifted_columns"]
    assert Path(result["report_path"]).is_file()


@pytest.mark.parametrize("contents", ["header", "nothing"])
def test_an_empty_batch_is_one_data_error_and_leaves_no_verdict(project, contents):
    from loopml.errors import DataError
    from loopml.status import last_monitoring

    columns = list(project.batch(5, seed=1).columns)
    source = project.project_dir / f"empty-{contents}.csv"
    source.write_text(",".join(columns) + "\n" if contents == "header" else "")
    before = last_monitoring(project.settings(), NAME)

    with pytest.raises(
        DataError, match=r"empty-\w+\.csv: (the batch has no rows|the file is empty)"
    ):
        _monitor(project, source)

    assert last_monitoring(project.settings(), NAME) == before


def test_a_reference_without_a_feature_column_is_named_as_the_culprit(project, shifted):
    from loopml.errors import DataError

    reference = project.write(project.batch(300, seed=59).drop(columns=["tenure"]), "no-tenure.csv")

    with pytest.raises(
        DataError, match=r"no-tenure\.csv: the reference is missing feature column\(s\): tenure"
    ):
        _monitor(project, shifted["source"], reference=reference)


def test_a_report_that_fails_says_the_verdict_was_recorded(project, monkeypatch):
    """The verdict and its events go out before the report (automations may act on them): when
    the report then fails, the one error line says so, and the verdict is the one recorded."""
    from loopml import reports
    from loopml.errors import LoopmlError
    from loopml.status import last_monitoring

    def broken(*args, **kwargs):
        raise RuntimeError("the report's renderer broke")

    monkeypatch.setattr(reports, "build_monitoring_report", broken)
    source = project.write(project.batch(300, seed=67), "report-breaks.csv")

    with pytest.raises(LoopmlError, match="the verdict was recorded and its events sent") as raised:
        _monitor(project, source)

    assert "the Evidently report failed: RuntimeError: the report's renderer broke" in str(
        raised.value
    )
    recorded = last_monitoring(project.settings(), NAME)
    assert f"batch {recorded['batch_id']}: " in str(raised.value)
    assert recorded["reason"] in str(raised.value)


def test_flipped_relation_degrades_performance_and_emits_the_event(project):
    frame = project.batch(300, seed=42, with_target=True)
    frame["churn"] = frame["churn"].map({"Yes": "No", "No": "Yes"})
    source = project.write(frame, "labelled-flipped.csv")

    result = _monitor(project, source)

    performance = result["performance"]
    assert result["performance_degraded"] is True and performance["degraded"] is True
    assert performance["current"]["roc_auc"] < 0.5
    assert performance["drop"] > performance["max_drop"]
    assert result["drift_detected"] is False  # the features did not move: only the relation did
    event = project.wait_for_event(
        events.PERFORMANCE_DEGRADED,
        where=lambda e: e["payload"].get("batch_id") == result["batch_id"],
    )
    assert event["resource"]["prefect.resource.id"] == f"loopml.project.{NAME}"
    assert event["payload"]["metric"] == "roc_auc"
    assert event["payload"]["drop"] == pytest.approx(performance["drop"])
    assert event["payload"]["current"] == pytest.approx(performance["current"]["roc_auc"])


def _shifted_reference(project: MaintainedProject) -> Path:
    frame = shifted_batch(project.batch(800, seed=61, with_target=True), seed=61)
    return project.write(frame, "shifted-reference.csv")


def test_reference_file_replaces_the_training_data(project, shifted):
    """Against a reference that is itself shifted, the shifted batch is not drift."""
    reference = _shifted_reference(project)

    result = _monitor(project, shifted["source"], reference=reference)

    assert result["reference"] == str(reference)
    assert result["drift_detected"] is False, result["drifted_columns"]
    assert not SHIFTED_COLUMNS & set(result["drifted_columns"])
    assert shifted["result"]["drift_detected"] is True  # the same batch vs. the training data
    assert Path(result["report_path"]).is_file()


@pytest.mark.slow
def test_cli_monitor_json_reports_the_shifted_batch(project):
    source = project.write(shifted_batch(project.batch(300, seed=51), seed=51), "cli-shifted.csv")

    completed = run_cli("monitor", NAME, "--data", str(source), "--json", cwd=project.project_dir)

    assert completed.returncode == 0, completed.stderr
    result = last_json(completed.stdout)
    assert result["drift_detected"] is True
    assert set(result["drifted_columns"]) >= SHIFTED_COLUMNS
    assert 0 < result["drift_share"] <= 1
    assert result["performance"] is None
    assert Path(result["report_path"]).is_file()


@pytest.mark.slow
def test_cli_monitor_reference_file_replaces_the_training_data(project):
    """The same through the CLI's ``--reference`` option."""
    reference = _shifted_reference(project)
    source = project.write(shifted_batch(project.batch(300, seed=62), seed=62), "vs-reference.csv")

    completed = run_cli(
        "monitor",
        NAME,
        "--data",
        str(source),
        "--reference",
        str(reference),
        "--json",
        cwd=project.project_dir,
    )

    assert completed.returncode == 0, completed.stderr
    result = last_json(completed.stdout)
    assert result["drift_detected"] is False, result["drifted_columns"]
    assert not SHIFTED_COLUMNS & set(result["drifted_columns"])


@pytest.mark.slow
def test_cli_monitor_before_any_champion_is_a_one_line_error(
    loopml_home, project_dir, prefect_api, telco_frame
):
    training = project_dir / "train.csv"
    telco_frame.head(500).to_csv(training, index=False)
    init_project(training, "churn", "unchampioned", project_dir)
    batch = project_dir / "batch.csv"
    telco_frame.tail(200).drop(columns="churn").to_csv(batch, index=False)

    completed = run_cli("monitor", "unchampioned", "--data", str(batch), "--json", cwd=project_dir)

    assert completed.returncode != 0
    assert completed.stdout.strip() == ""
    error_lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, completed.stderr
    assert error_lines[0].startswith("loopml: error:")
    assert "champion" in error_lines[0]
    assert "unchampioned" in error_lines[0]
    assert not (loopml_home / "reports").exists()


def test_monitoring_before_any_champion_raises_a_clear_error(
    loopml_home, project_dir, prefect_api, telco_frame
):
    """The same, in process: the flow's own error names the missing champion."""
    from flows.monitoring import monitor_flow
    from loopml.errors import LoopmlError

    training = project_dir / "train.csv"
    telco_frame.head(500).to_csv(training, index=False)
    init_project(training, "churn", "unchampioned", project_dir)
    batch = project_dir / "batch.csv"
    telco_frame.tail(200).drop(columns="churn").to_csv(batch, index=False)

    with pytest.raises(LoopmlError, match="champion"):
        monitor_flow(project="unchampioned", data=str(batch), project_dir=str(project_dir))


def test_runs_are_named_after_what_they_do_and_mlflow_links_back_to_prefect(project, shifted):
    import httpx

    champion = project.champion()
    run = project.runtime().mlflow.get_run(champion.run_id)
    family = champion.tags["loopml.family"]
    assert run.info.run_name == f"train-{NAME}-v{champion.version}-{family}"
    flow_run_id = run.data.tags["loopml.prefect_flow_run_id"]
    assert "threshold" in run.data.params
    experiment = project.runtime().mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert champion.description.startswith("Promoted by the promotion gate: ")
    assert "Prefect flow run" in run.data.tags["mlflow.note.content"]

    response = httpx.get(f"{project.api_url}/flow_runs/{flow_run_id}", timeout=30)
    response.raise_for_status()
    assert response.json()["name"] == f"train-{NAME}"
    response = httpx.post(
        f"{project.api_url}/flow_runs/filter",
        json={"flow_runs": {"name": {"like_": f"monitor-{NAME}-shifted"}}},
        timeout=30,
    )
    response.raise_for_status()
    names = {r["name"] for r in response.json()}
    assert names == {f"monitor-{NAME}-shifted"}
