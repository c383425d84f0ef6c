"""A quiet Prefect UI and a talkative CLI (issue 14, items 4 and 7), against a real Prefect
server and a trained champion: a quarantined batch ends in its own state (no failure), every
run of a project is tagged (its task runs are not), event values show as labels, ``status``
tells about the inbox and the quarantine, and a command's progress goes to stderr while its
JSON stays last on stdout.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from loopml.data import file_hash
from tests.conftest import last_json, run_cli
from tests.integration.maintenance_fixtures import MaintainedProject, maintained_project

pytestmark = [pytest.mark.slow]

NAME = "quiet_telco"
TAGS = {"loopml", f"project:{NAME}"}
PROGRESS_LINE = re.compile(r"^\[ *\d+\.\ds\] monitor-quiet_telco-[\w-]+( > [\w-]+)?: ")


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("quiet"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


def _runs(flow: str, project: MaintainedProject) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
    return [run for run in runs if run.parameters.get("project") == project.name]


def _task_runs(flow_run_ids: list) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )


def _aged(path: Path) -> Path:
    then = time.time() - 60  # settled: the inbox takes it at once
    os.utime(path, (then, then))
    return path


def test_an_inbox_batch_failing_validation_ends_quarantined_and_every_subflow_is_tagged(
    project,
) -> None:
    from flows.inbox import inbox_flow
    from loopml import events

    inbox = project.home / "inbox" / NAME
    inbox.mkdir(parents=True, exist_ok=True)
    invalid = project.batch(200, seed=21).drop(columns="contract")
    invalid.to_csv(inbox / "a-invalid.csv", index=False)
    project.batch(200, seed=22).to_csv(inbox / "b-clean.csv", index=False)
    invalid_id = "b" + file_hash(_aged(inbox / "a-invalid.csv"))
    clean_id = "b" + file_hash(_aged(inbox / "b-clean.csv"))

    summary = inbox_flow(NAME, str(project.project_dir))

    statuses = {entry["file"]: entry["status"] for entry in summary["files"]}
    assert statuses == {"a-invalid.csv": "quarantined", "b-clean.csv": "processed"}
    score_runs = {Path(run.parameters["data"]).name: run for run in _runs("score", project)}
    assert score_runs["a-invalid.csv"].state_name == "Quarantined"
    assert score_runs["a-invalid.csv"].state_type.value == "FAILED"
    assert score_runs["b-clean.csv"].state_name == "Completed"
    monitor_runs = [run for run in _runs("monitor", project) if run.parameters.get("batch_id")]
    assert [run.parameters["batch_id"] for run in monitor_runs] == [clean_id]
    for run in [*score_runs.values(), *monitor_runs]:
        assert set(run.tags) >= TAGS, (run.name, run.tags)
    # ... and their task runs are not: each tagged task run costs a concurrency-limit check.
    task_runs = _task_runs([run.id for run in monitor_runs])
    assert len(task_runs) >= 10 and all(not run.tags for run in task_runs), task_runs[0].tags

    # The event's values are labels of its resource: the Details tab shows them.
    quarantined = project.wait_for_event(
        events.DATA_QUARANTINED, where=lambda e: e["payload"].get("batch_id") == invalid_id
    )
    assert quarantined["resource"]["loopml.batch_id"] == invalid_id
    assert quarantined["resource"]["loopml.quarantine_path"].endswith(invalid_id)

    status = run_cli("status", NAME, "--json", cwd=project.project_dir)
    assert status.returncode == 0, status.stderr
    result = last_json(status.stdout)
    assert result["inbox"]["waiting"] == 0
    assert result["inbox"]["quarantined"] == 1
    assert result["inbox"]["last"]["file"] == "b-clean.csv"
    assert result["inbox"]["last"]["status"] == "processed"
    assert result["quarantine"]["batches"] >= 1
    assert invalid_id in [entry["batch_id"] for entry in result["quarantine"]["latest"]]

    text = run_cli("status", NAME, cwd=project.project_dir)
    assert text.returncode == 0, text.stderr
    assert "inbox: 0 file(s) waiting, 0 failed, 1 quarantined" in text.stdout
    assert f"batch {clean_id}) processed:" in text.stdout
    assert f"batch {invalid_id}" in text.stdout
    assert not re.search(r"\d\.\d{5,}", text.stdout), text.stdout


def test_cli_validate_of_a_failing_batch_is_one_line_and_a_tagged_quarantined_run(
    project,
) -> None:
    source = project.write(project.batch(100, seed=23).drop(columns="tenure"), "no-tenure.csv")

    completed = run_cli("validate", NAME, "--data", str(source), cwd=project.project_dir)

    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("loopml: error:")
    runs = [run for run in _runs("validate", project) if run.parameters["data"] == str(source)]
    assert [(run.state_name, run.state_type.value) for run in runs] == [("Quarantined", "FAILED")]
    assert set(runs[0].tags) >= TAGS


def test_monitor_progress_goes_to_stderr_and_the_json_stays_last_on_stdout(project) -> None:
    source = project.write(project.batch(300, seed=24), "progress.csv")
    args = ("monitor", NAME, "--data", str(source), "--json")

    # The user's default run log level (the test session lowers Prefect's to WARNING).
    info = {"PREFECT_LOGGING_LEVEL": "INFO"}
    shown = run_cli(*args, cwd=project.project_dir, env={**info, "LOOPML_PROGRESS": "1"})

    assert shown.returncode == 0, shown.stderr
    progress = [line for line in shown.stderr.splitlines() if PROGRESS_LINE.match(line)]
    assert any(" > " in line and line.endswith(": done") for line in progress), shown.stderr
    assert any(": started" in line for line in progress), shown.stderr
    assert json.loads(shown.stdout.strip().splitlines()[-1])["batch_id"]
    assert not PROGRESS_LINE.search(shown.stdout)

    quiet = run_cli(*args, cwd=project.project_dir, env={**info, "LOOPML_PROGRESS": "0"})
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if PROGRESS_LINE.match(line)]
    assert last_json(quiet.stdout)["batch_id"] == last_json(shown.stdout)["batch_id"]
