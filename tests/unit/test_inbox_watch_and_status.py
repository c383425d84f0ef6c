"""A quiet Prefect UI and a talkative CLI (issue 14, items 4 and 7), the parts without servers:
the inbox watcher starts a run only when ready files change, outcome and status lines, event
labels the Prefect UI's Details tab shows, and the progress lines of a command."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest

from loopml.cli.registry import status_lines
from loopml.cli.stack.inbox_watch import InboxWatcher, _Watched
from loopml.config import ColumnsConfig, ProjectConfig, ScheduleConfig
from loopml.events import event_resource
from loopml.inbox import inbox_state, outcome_line, record_outcome

PROJECT = "churn"
DEPLOYMENT = f"inbox/inbox-{PROJECT}"


def _config(poll: int = 1, sweep: int = 600) -> ProjectConfig:
    return ProjectConfig(
        name=PROJECT,
        data="data/churn.csv",
        target="churned",
        task="classification",
        positive_label="yes",
        columns=ColumnsConfig(numeric=["tenure"], categorical=["contract"]),
        schedules=ScheduleConfig(inbox_poll_seconds=poll, inbox_sweep_seconds=sweep),
    )


class _Prefect:
    """Stands in for the two Prefect calls the watcher makes (start a run, is one in flight)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.busy = False

    def start_run(self, deployment: str) -> None:
        self.started.append(deployment)

    def in_flight(self, deployment: str) -> bool:
        return self.busy


def _drop(folder: Path, name: str, age_seconds: float = 60) -> Path:
    path = folder / name
    path.write_text("tenure,contract\n1,monthly\n")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


@pytest.fixture
def watched(tmp_path) -> tuple[InboxWatcher, _Watched, _Prefect, list[str]]:
    prefect, printed = _Prefect(), []
    folder = tmp_path / "inbox" / PROJECT
    folder.mkdir(parents=True)
    watcher = InboxWatcher(
        tmp_path / "inbox",
        [_config()],
        start_run=prefect.start_run,
        in_flight=prefect.in_flight,
        progress=printed.append,
    )
    return watcher, _Watched(_config(), folder), prefect, printed


def test_an_empty_inbox_starts_no_run_however_often_it_is_looked_at(watched) -> None:
    watcher, state, prefect, _ = watched
    for second in range(100):
        watcher.look(state, now=float(second))
    assert prefect.started == []


def test_a_ready_file_starts_one_run_and_a_new_file_another(watched) -> None:
    watcher, state, prefect, _ = watched
    _drop(state.folder, "a.csv")
    _drop(state.folder, ".b.csv.part")  # not ready: hidden, partial
    _drop(state.folder, "c.csv", age_seconds=0)  # not settled yet
    for second in range(30):  # the file waits (no champion yet): no run per look
        watcher.look(state, now=float(second))
    assert prefect.started == [DEPLOYMENT]
    _drop(state.folder, "d.csv")
    watcher.look(state, now=40.0)
    assert prefect.started == [DEPLOYMENT, DEPLOYMENT]


def test_no_run_while_one_is_in_flight_then_one_for_what_is_left(watched) -> None:
    watcher, state, prefect, _ = watched
    prefect.busy = True
    _drop(state.folder, "a.csv")
    watcher.look(state, now=0.0)
    assert prefect.started == []
    prefect.busy = False
    watcher.look(state, now=2.0)
    assert prefect.started == [DEPLOYMENT]


def test_no_run_for_files_a_run_filed_while_the_watcher_asked_whether_one_runs(watched) -> None:
    """The listing saw the file, then the run that had it moved it and ended before the
    in-flight question was answered: a new run would find nothing (an empty inbox run)."""
    watcher, state, prefect, _ = watched
    dropped = _drop(state.folder, "a.csv")

    def filed_meanwhile(deployment: str) -> bool:
        dropped.rename(state.folder.parent / "a.csv")  # out of the inbox, as file_away does
        return False

    watcher.in_flight = filed_meanwhile
    watcher.look(state, now=0.0)
    assert prefect.started == []
    watcher.look(state, now=0.1)  # looked at again at the next tick: nothing left
    assert prefect.started == []


def test_files_left_waiting_get_another_run_after_the_sweep_period(watched) -> None:
    watcher, state, prefect, _ = watched
    _drop(state.folder, "a.csv")
    watcher.look(state, now=0.0)
    watcher.look(state, now=599.0)
    assert prefect.started == [DEPLOYMENT]
    watcher.look(state, now=601.0)
    assert prefect.started == [DEPLOYMENT, DEPLOYMENT]


def test_each_new_outcome_is_printed_once(watched) -> None:
    watcher, state, _, printed = watched
    record_outcome(state.folder, {"file": "old.csv", "batch_id": "b0", "status": "processed"})
    watcher.start()  # what was recorded before the start is not printed again
    watcher.stop()
    state = watcher._watched[0]
    entry = {"file": "a.csv", "batch_id": "b1", "status": "quarantined", "reason": "bad\nrows"}
    record_outcome(state.folder, entry)
    watcher.look(state, now=0.0)
    watcher.look(state, now=1.0)
    assert printed == [f"inbox {PROJECT}: a.csv (batch b1) quarantined: bad rows"]
    record_outcome(state.folder, {**entry, "file": "b.csv", "batch_id": "b2"})
    watcher.stop()  # recorded after the last look, before the stop: still printed
    assert printed[1:] == [f"inbox {PROJECT}: b.csv (batch b2) quarantined: bad rows"]


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        (
            {
                "file": "a.csv",
                "batch_id": "b1",
                "status": "processed",
                "rows": 500,
                "model_version": "3",
                "drift_detected": True,
                "drift_share": 0.5555555555,
                "performance_degraded": True,
            },
            "churn: a.csv (batch b1) processed: 500 rows, v3, drift detected (share 0.56), "
            "performance degraded",
        ),
        (
            {"file": "a.csv", "batch_id": "b1", "status": "duplicate"},
            "churn: a.csv (batch b1) duplicate: these bytes were processed before; "
            "filed under processed/",
        ),
        (
            {"file": "a.csv", "batch_id": "b1", "status": "retry", "attempts": 1, "reason": "x"},
            "churn: a.csv (batch b1) retry: attempt 1 of 3 failed: x",
        ),
    ],
)
def test_outcome_lines(entry, line) -> None:
    assert outcome_line(entry, PROJECT) == line


def test_inbox_state_counts_waiting_failed_quarantined_and_names_the_last(tmp_path) -> None:
    folder = tmp_path / PROJECT
    folder.mkdir()
    _drop(folder, "waiting.csv")
    for sub, count in (("failed", 1), ("quarantined", 2)):
        (folder / sub).mkdir()
        for index in range(count):
            (folder / sub / f"{index}.csv").write_text("x\n")
    record_outcome(folder, {"file": "a.csv", "batch_id": "b1", "status": "processed"})
    record_outcome(folder, {"file": "b.csv", "batch_id": "b2", "status": "retry"})
    state = inbox_state(folder)
    assert (state["waiting"], state["failed"], state["quarantined"]) == (1, 1, 2)
    assert state["last"]["file"] == "a.csv"


def test_status_lines_round_numbers_and_show_inbox_and_quarantine() -> None:
    result = {
        "champion": {"version": "2", "family": "logistic", "metrics": {"roc_auc": 0.84123456}},
        "challenger": None,
        "last_monitoring": {
            "checked_at": "2026-12-03T10:00:00+00:00",
            "batch_id": "b1",
            "drift_detected": False,
            "drift_share": 0.10526315789473684,
            "performance_degraded": False,
        },
        "history": [],
        "inbox": {
            "inbox_dir": "/h/inbox/churn",
            "waiting": 2,
            "failed": 1,
            "quarantined": 1,
            "last": {
                "at": "2026-12-03T10:00:00+00:00",
                "file": "a.csv",
                "batch_id": "b1",
                "status": "processed",
                "rows": 10,
                "model_version": "2",
                "drift_detected": False,
                "drift_share": 0.10526315789473684,
            },
        },
        "quarantine": {
            "quarantine_dir": "/h/quarantine/churn",
            "batches": 1,
            "latest": [{"at": "2026-12-03T09:00:00+00:00", "batch_id": "b9", "reason": "no x"}],
        },
    }
    text = "\n".join(status_lines(result))
    assert not re.search(r"\d\.\d{5,}", text), text
    assert "share=0.11" in text
    assert "inbox: 2 file(s) waiting, 1 failed, 1 quarantined (/h/inbox/churn)" in text
    assert "  last: 2026-12-03T10:00:00+00:00 a.csv (batch b1) processed: 10 rows, v2" in text
    assert "quarantine: 1 batch(es) (/h/quarantine/churn)" in text
    assert "  2026-12-03T09:00:00+00:00 batch b9: no x" in text


def test_event_payload_values_become_labels_the_details_tab_shows() -> None:
    payload = {
        "batch_id": "b1",
        "drift_share": 0.5555555555,
        "drift_detected": True,
        "drifted_columns": ["tenure", "contract"],
        "performance": {"roc_auc": 0.8},  # nested: stays in the payload only
        "model_version": None,
    }
    resource = event_resource(PROJECT, payload)
    assert resource["prefect.resource.id"] == f"loopml.project.{PROJECT}"
    assert resource["loopml.batch_id"] == "b1"
    assert resource["loopml.drift_share"] == "0.5556"
    assert resource["loopml.drift_detected"] == "true"
    assert resource["loopml.drifted_columns"] == "tenure, contract"
    assert "loopml.performance" not in resource and "loopml.model_version" not in resource


def test_progress_lines_name_the_run_and_stage_with_the_elapsed_time() -> None:
    from loopml.cli.progress import progress_line

    def record(message: str, **extra: str) -> logging.LogRecord:
        made = logging.LogRecord("prefect.task_runs", logging.INFO, "", 0, message, (), None)
        made.__dict__.update(extra)
        return made

    trial = record(
        "trial 3 (logistic): roc_auc=0.8412", flow_run_name="train-churn", task_name="search"
    )
    assert progress_line(trial, 12.34) == (
        "[  12.3s] train-churn > search: trial 3 (logistic): roc_auc=0.8412"
    )
    done = record("Finished in state Completed()", flow_run_name="train-churn", task_name="fit")
    assert progress_line(done, 1.0) == "[   1.0s] train-churn > fit: done"
    assert progress_line(record("Created task run 'fit-1'", flow_run_name="x"), 1.0) is None
