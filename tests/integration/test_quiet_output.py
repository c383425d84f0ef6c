"""A command's console holds loopml's lines only; what libraries print goes to the run log."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import init_project, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_native_thread")]

LOOPML_CONSOLE_LINE = re.compile(
    r"^[\d:.]+ \| (WARNING|CRITICAL) +\| (loopml(\.\w+)*|prefect\.(flow|task)_runs) - "
)
LIBRARY_LINES = ("Registered model", "Successfully registered", "Created version", "%|")


def _run_log(project: str, timeout: float = 60) -> list[str]:
    """The messages of ``project``'s train flow run in the Prefect API (logs arrive in the
    background, so wait until MLflow's registration line is there or ``timeout`` passes)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = [
                run
                for run in client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["train"]))
                )
                if run.parameters.get("project") == project
            ]
            assert len(runs) == 1
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id]))
            )
        messages = [log.message for log in logs]
        if any("Successfully registered" in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


def test_train_prints_only_loopml_lines_and_the_library_lines_go_to_the_run_log(
    prefect_api, loopml_home, project_dir, telco_sample, project_name
):
    init_project(telco_sample, "churn", project_name, project_dir)

    # As a script runs it (no terminal: no progress lines), with the user's default run log
    # level (the test session lowers Prefect's to WARNING).
    quiet_script = {"LOOPML_PROGRESS": "0", "PREFECT_LOGGING_LEVEL": "INFO"}
    completed = run_cli("train", project_name, "--trials", "1", cwd=project_dir, env=quiet_script)

    assert completed.returncode == 0, completed.stderr
    # stderr may hold loopml's own warnings (its loggers, or a run's logger), nothing else.
    for line in completed.stderr.splitlines():
        assert LOOPML_CONSOLE_LINE.match(line), line
    first, *rest = completed.stdout.splitlines()
    assert re.fullmatch(rf"{project_name} v1 \(\w+, 1 trials?\): promoted to champion", first)
    assert rest and all(line.startswith("  ") for line in rest), completed.stdout
    for text in LIBRARY_LINES:
        assert text not in completed.stdout + completed.stderr
    run_log = _run_log(project_name)
    assert f"Successfully registered model '{project_name}'." in run_log
    assert f"Created version '1' of model '{project_name}'." in run_log
