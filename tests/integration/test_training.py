"""The training path as a user runs it: the train flow against a real Prefect server and a real
MLflow store, checked the way a user checks it (registry, run page, Prefect UI, events, ledger).

The module trains version 1 of one Telco project once (a 2,000-row sample, 3 trials). The tests
that only read it come first; the last test trains version 2 on the same project and moves the
aliases, so it must stay last in the file.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from flows.registry import promote_flow, rollback_flow
from flows.training import train_flow
from loopml import ledger
from loopml.config import config_path, load_config, suite_path
from loopml.data import file_hash, frame_hash, read_table
from loopml.errors import ValidationFailed
from loopml.features import prepare_features
from loopml.profiling import suite_hash
from loopml.validation import load_suite
from tests.conftest import init_project, last_json, run_cli

pytestmark = pytest.mark.usefixtures("single_native_thread")

TRIALS = 3
# Every test that uses the trained project pays for (or shares) a training run.
slow = pytest.mark.slow
TRAINING_TASKS = {
    "load-table",
    "validate",
    "split",
    "search",
    "fit",
    "evaluate",
    "compare-with-champion",
    "register",
    "promotion-gate",
}


@dataclass
class TrainedProject:
    name: str
    project_dir: Path
    home: Path
    data: Path
    flow_run_id: str
    result: dict[str, Any]

    @property
    def client(self) -> MlflowClient:
        return mlflow_client(self.home)


def mlflow_client(home: Path) -> MlflowClient:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {
        alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()
    }


def artifact_key_prefix(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


@contextmanager
def project_environment(home: Path, api_url: str) -> Iterator[None]:
    """What the ``loopml_home`` and ``prefect_api`` fixtures do, for a whole module."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch:
        home.mkdir(parents=True, exist_ok=True)
        patch.setenv("LOOPML_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        for variable in ("MLFLOW_REGISTRY_URI", "LOOPML_OPTUNA_STORAGE"):
            patch.delenv(variable, raising=False)
        patch.setenv("PREFECT_API_URL", api_url)
        patch.setenv("OMP_NUM_THREADS", "1")
        with temporary_settings(updates={PREFECT_API_URL: api_url}), threadpool_limits(limits=1):
            yield


@pytest.fixture(scope="module")
def trained(prefect_server, telco_sample, tmp_path_factory) -> Iterator[TrainedProject]:
    root = tmp_path_factory.mktemp("trained")
    name = f"telco_{uuid.uuid4().hex[:8]}"
    project_dir = root / "project"
    project_dir.mkdir()
    with project_environment(root / "home", prefect_server.api_url):
        init_project(telco_sample, "churn", name, project_dir)
        state = train_flow(
            project=name, project_dir=str(project_dir), trials=TRIALS, return_state=True
        )
        yield TrainedProject(
            name=name,
            project_dir=project_dir,
            home=root / "home",
            data=telco_sample,
            flow_run_id=str(state.state_details.flow_run_id),
            result=state.result(),
        )


def read_project_events(name: str, wanted: set[str], timeout: float = 90) -> list[Any]:
    """The project's events from the Prefect API, once every name in ``wanted`` has arrived
    (events are sent in the background and stored asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            # A fresh filter each time: its default upper bound is "now" at construction.
            # The server caps a page at 50 events (the client's default of 100 gets a 422).
            page = client.read_events(
                EventFilter(resource=EventResourceFilter(id=[f"loopml.project.{name}"])), limit=50
            )
        events = sorted(page.events, key=lambda event: event.occurred)
        if wanted <= {event.event for event in events} or time.monotonic() > deadline:
            return events
        time.sleep(1)


# --- version 1 --------------------------------------------------------------------------------


@slow
def test_first_training_registers_version_1_as_champion(trained):
    client, name, result = trained.client, trained.name, trained.result

    assert result["version"] == "1"
    assert result["promoted"] is True
    assert result["trials"] == TRIALS
    assert aliases(client, name) == {"champion": "1"}  # and no challenger

    version = client.get_model_version(name, "1")
    tags = version.tags
    assert tags["loopml.training_data_hash"] == frame_hash(read_table(trained.data))
    assert tags["loopml.suite_hash"] == suite_hash(
        load_suite(suite_path(name, trained.project_dir))
    )
    assert tags["loopml.parent_version"] == "none"
    assert tags["loopml.family"] == result["family"]
    assert tags["loopml.gate"] == "promoted"
    assert tags["loopml.training_rows"] == "1600"  # 80 % of 2,000
    for metric in ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss"):
        assert float(tags[f"loopml.test_{metric}"]) == pytest.approx(
            result["test_metrics"][metric], rel=1e-5
        )
    assert 0.0 < float(tags["loopml.threshold"]) < 1.0
    # Churn is predictable from contract and tenure; a broken pipeline lands near 0.5.
    assert result["test_metrics"]["roc_auc"] > 0.75

    history = ledger.read_entries(trained.home / "ledger", name)
    assert [(entry["action"], entry["version"]) for entry in history] == [
        ("registered", "1"),
        ("promoted", "1"),
    ]
    assert "no champion yet" in history[-1]["reason"]


@slow
def test_training_run_has_params_metrics_plots_and_reference_data(trained, tmp_path):
    client, result = trained.client, trained.result
    run = client.get_run(result["run_id"])

    assert client.get_experiment(run.info.experiment_id).name == trained.name
    assert run.data.params["family"] == result["family"]
    for param in result["best_params"]:
        assert param in run.data.params
    assert run.data.metrics["test_roc_auc"] == pytest.approx(result["test_metrics"]["roc_auc"])
    assert run.data.metrics["cv_roc_auc"] == pytest.approx(result["cv_metrics"]["cv_roc_auc"])
    assert run.data.metrics["search_trials"] == TRIALS

    plots = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")]
    assert "plots/roc_curve.png" in plots
    assert len(plots) >= 3
    for plot in plots:
        local = Path(client.download_artifacts(run.info.run_id, plot, str(tmp_path)))
        assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot

    reference = Path(client.download_artifacts(run.info.run_id, "reference", str(tmp_path)))
    train = pd.read_parquet(reference / "train.parquet")
    test = pd.read_parquet(reference / "test.parquet")
    assert (len(train), len(test)) == (1600, 400)
    assert "churn" in train.columns
    config = load_config(trained.name, trained.project_dir)
    profile = json.loads((reference / "profile.json").read_text())
    assert profile["n_rows"] == 1600
    assert set(profile["numeric"]) == set(config.columns.numeric)
    assert set(profile["categorical"]) == set(config.columns.categorical)


@slow
def test_training_run_shows_its_datasets_and_every_search_trial(trained, tmp_path):
    client, result = trained.client, trained.result
    run = client.get_run(result["run_id"])

    datasets = {}
    for dataset_input in run.inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in dataset_input.tags}
        datasets[tags["mlflow.data.context"]] = dataset_input.dataset
    assert set(datasets) == {"training", "evaluation"}
    assert datasets["training"].name == f"{trained.name}-training"
    assert datasets["evaluation"].name == f"{trained.name}-held-out"
    rows = {context: json.loads(d.profile)["num_rows"] for context, d in datasets.items()}
    assert rows == {"training": 1600, "evaluation": 400}
    schema = json.loads(datasets["training"].schema)["mlflow_colspec"]
    assert "churn" in {column["name"] for column in schema}

    # The tag that makes the MLflow UI's Artifacts tab offer "View as table" for the file.
    logged_tables = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "search_trials.json", "type": "table"} in logged_tables
    local = Path(client.download_artifacts(run.info.run_id, "search_trials.json", str(tmp_path)))
    logged = json.loads(local.read_text())
    trials = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert list(trials.columns) == ["trial", "family", "state", "cv_roc_auc", "seconds", "params"]
    assert sorted(trials["trial"]) == list(range(TRIALS))
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    complete = trials[trials["state"] == "COMPLETE"]
    assert not complete.empty
    assert complete["cv_roc_auc"].is_monotonic_decreasing  # best first
    assert (trials["seconds"] > 0).all()
    for params in trials["params"]:
        assert isinstance(json.loads(params), dict)


@slow
def test_champion_alias_loads_predicts_and_reproduces_its_held_out_score(trained, tmp_path):
    name = trained.name
    config = load_config(name, trained.project_dir)
    run_id = trained.result["run_id"]
    reference = trained.client.download_artifacts(run_id, "reference/test.parquet", str(tmp_path))
    held_out = pd.read_parquet(reference)
    features = prepare_features(held_out, config)

    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    # pyfunc takes the rows as stored (integer columns as integers), like a user's CSV.
    predictions = served.predict(held_out)
    assert len(predictions) == len(held_out)
    assert set(pd.Series(predictions).unique()) <= {"Yes", "No"}

    model = mlflow.sklearn.load_model(f"models:/{name}@champion")
    positive = list(model.classes_).index("Yes")
    score = roc_auc_score(held_out["churn"] == "Yes", model.predict_proba(features)[:, positive])
    tag = trained.client.get_model_version(name, "1").tags["loopml.test_roc_auc"]
    assert score == pytest.approx(float(tag), abs=1e-5)


@slow
def test_flow_run_tasks_and_artifacts_are_in_prefect(trained):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[trained.flow_run_id]))
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train"])), flow_run_filter=this_run
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[trained.flow_run_id])
            )
        )
        # Task run states reach the server as events, stored asynchronously: wait for them.
        while True:
            task_runs = client.read_task_runs(flow_run_filter=this_run)
            task_states = {run.name.rsplit("-", 1)[0]: run.state for run in task_runs}
            settled = set(task_states) >= TRAINING_TASKS and all(
                state.is_completed() for state in task_states.values()
            )
            if settled or time.monotonic() > deadline:
                break
            time.sleep(1)

    assert len(flow_runs) == 1
    flow_run = flow_runs[0]
    assert flow_run.state.is_completed()
    assert flow_run.parameters["project"] == trained.name
    assert flow_run.parameters["trials"] == TRIALS

    assert set(task_states) >= TRAINING_TASKS
    assert all(state.is_completed() for state in task_states.values())

    prefix = artifact_key_prefix(trained.name)
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert {f"{prefix}-search", f"{prefix}-evaluation", f"{prefix}-promotion"} <= set(by_key)
    assert "roc_auc" in by_key[f"{prefix}-evaluation"].data
    assert "promoted to champion" in by_key[f"{prefix}-promotion"].data


@slow
def test_training_emits_validated_registered_and_promoted_events(trained):
    wanted = {"loopml.data.validated", "loopml.model.registered", "loopml.model.promoted"}

    events = read_project_events(trained.name, wanted)

    by_name = {event.event: event for event in events}
    assert wanted <= set(by_name)
    registered = by_name["loopml.model.registered"]
    assert registered.payload["version"] == "1"
    assert registered.payload["run_id"] == trained.result["run_id"]
    assert registered.resource.id == f"loopml.project.{trained.name}"
    assert by_name["loopml.model.promoted"].payload["version"] == "1"
    related = {resource.id for resource in by_name["loopml.model.promoted"].related}
    assert f"prefect.flow-run.{trained.flow_run_id}" in related


# --- validation gate ----------------------------------------------------------------------------


def test_failing_training_table_is_quarantined_and_nothing_is_registered(
    prefect_api, loopml_home, project_dir, telco_sample, project_name, tmp_path
):
    init_project(telco_sample, "churn", project_name, project_dir)
    batch = pd.read_csv(telco_sample)
    batch.loc[batch.sample(frac=0.2, random_state=1).index, "tenure"] = 10_000  # months
    bad = tmp_path / "bad_batch.csv"
    batch.to_csv(bad, index=False)
    original = bad.read_bytes()

    with pytest.raises(ValidationFailed) as raised:
        train_flow(project=project_name, project_dir=str(project_dir), data=str(bad), trials=1)

    folder = Path(raised.value.quarantine_path)
    assert folder == loopml_home / "quarantine" / project_name / f"b{file_hash(bad)}"
    assert (folder / bad.name).read_bytes() == original  # copied byte for byte ...
    assert bad.read_bytes() == original  # ... and the source left alone
    report = json.loads((folder / "validation.json").read_text())
    assert report["success"] is False
    assert "tenure" in {failure["column"] for failure in report["failures"]}
    assert "tenure" in str(raised.value)

    client = mlflow_client(loopml_home)
    assert client.search_registered_models(filter_string=f"name = '{project_name}'") == []
    experiment = client.get_experiment_by_name(project_name)
    if experiment is not None:
        assert client.search_runs([experiment.experiment_id]) == []
    assert ledger.read_entries(loopml_home / "ledger", project_name) == []

    events = read_project_events(project_name, {"loopml.data.quarantined"})
    quarantined = [event for event in events if event.event == "loopml.data.quarantined"]
    assert quarantined and quarantined[0].payload["quarantine_path"] == str(folder)
    assert "loopml.model.registered" not in {event.event for event in events}


# --- version 2: the gate, then promote and rollback by hand (keep last: it moves aliases) -------


@slow
def test_second_training_is_gated_then_promoted_and_rolled_back(trained):
    client, name, project_dir = trained.client, trained.name, trained.project_dir
    versions = [
        str(version.version) for version in client.search_model_versions(f"name = '{name}'")
    ]
    assert versions == ["1"], "this test expects the module's version 1 only: keep it last"

    # A margin no model can clear makes the refusal deterministic.
    path = config_path(name, project_dir)
    raw = yaml.safe_load(path.read_text())
    raw["gate"]["min_improvement"] = 0.5
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    second = train_flow(project=name, project_dir=str(project_dir), trials=TRIALS)

    assert second["version"] == "2"
    assert second["promoted"] is False
    assert aliases(client, name) == {"champion": "1", "challenger": "2"}
    tags = client.get_model_version(name, "2").tags
    assert tags["loopml.parent_version"] == "1"
    assert tags["loopml.gate"] == "refused"
    assert client.get_model_version(name, "2").description.startswith(
        "Refused by the promotion gate: "
    )
    refusal = ledger.read_entries(trained.home / "ledger", name)[-1]
    assert (refusal["action"], refusal["version"], refusal["previous_champion"]) == (
        "refused",
        "2",
        "1",
    )
    assert refusal["reason"] == second["reason"]
    assert "not better with confidence" in refusal["reason"]
    assert "margin 0.5" in refusal["reason"]
    # Champion and challenger were scored on the same held-out rows: the champion's score
    # there is exactly the one recorded when it was trained on this same table.
    held_out = refusal["decision"]["comparisons"]["held_out"]
    champion_tag = float(client.get_model_version(name, "1").tags["loopml.test_roc_auc"])
    assert held_out["champion"] == pytest.approx(champion_tag, abs=1e-5)
    assert held_out["candidate"] == pytest.approx(second["test_metrics"]["roc_auc"])

    promoted = promote_flow(
        project=name, version="2", reason="reviewed by hand", project_dir=str(project_dir)
    )
    assert (promoted["action"], promoted["version"], promoted["previous_champion"]) == (
        "promoted",
        "2",
        "1",
    )
    assert aliases(client, name) == {"champion": "2"}
    gate_tags = {v: client.get_model_version(name, v).tags["loopml.gate"] for v in ("1", "2")}
    assert gate_tags == {"1": "replaced", "2": "promoted"}
    assert client.get_model_version(name, "2").description == "Promoted by hand: reviewed by hand"

    rolled_back = rollback_flow(project=name, project_dir=str(project_dir))
    assert (rolled_back["action"], rolled_back["version"], rolled_back["previous_champion"]) == (
        "rolled_back",
        "1",
        "2",
    )
    assert aliases(client, name) == {"champion": "1"}
    gate_tags = {v: client.get_model_version(name, v).tags["loopml.gate"] for v in ("1", "2")}
    assert gate_tags == {"1": "restored", "2": "rolled_back"}

    status = run_cli("status", name, "--json", cwd=project_dir, timeout=300)
    assert status.returncode == 0, status.stderr
    shown = last_json(status.stdout)
    assert shown["champion"]["version"] == "1"
    assert shown["challenger"] is None
    assert shown["versions"] == ["1", "2"]
    assert [(entry["action"], entry["version"]) for entry in shown["history"]] == [
        ("promoted", "1"),
        ("refused", "2"),
        ("promoted", "2"),
        ("rolled_back", "1"),
    ]

    events = read_project_events(name, {"loopml.model.rolled_back"})
    promotions = [e.payload for e in events if e.event == "loopml.model.promoted"]
    assert [(p["version"], p["reason"]) for p in promotions if p["version"] == "2"] == [
        ("2", "reviewed by hand")  # the gate's refusal promoted nothing
    ]
    rollbacks = [e.payload for e in events if e.event == "loopml.model.rolled_back"]
    assert [(p["version"], p["previous_champion"]) for p in rollbacks] == [("1", "2")]
