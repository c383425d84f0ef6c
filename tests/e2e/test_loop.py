"""The loop closes by itself: ``loopml up``, a champion, a drifted batch in the inbox.

One stack for the session (shared with test_browser.py): a real Prefect server, the served
deployments, the automations, MLflow on SQLite. The fixture acts as a user would: ``loopml up``,
``loopml train``, then it drops two batches into ``$LOOPML_HOME/inbox/loop/`` (write, then
rename): one that fails validation and one whose population drifted (short-tenure fibre
customers, labelled). Nothing else is done by hand; the tests read what happened through the
Prefect API, MLflow, the ledger and the notification sink.

Event storm (after the loop closed): 20 ``loopml.drift.detected`` events for the project within a
few seconds, 10 distinct batch ids (one is the drifted batch's, already retrained; nine are new),
each twice. They fall inside the cooldown window the drifted batch opened, so the automation
starts nothing: across 1 + 20 drift events (plus the degradation event of the same batch) the
project gets exactly one retraining run. A fresh window firing exactly once for a storm is
tested without a runner in tests/integration/test_stack.py; here the flow-level guard is also
exercised: running the retrain deployment again with the same batch id retrains nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, SAMPLE, free_port, init_project, last_json, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

PROJECT = "loop"
COOLDOWN_SECONDS = 900
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class ClosedLoop:
    """What the fixture did and where things are."""

    home: Path
    project_dir: Path
    env: dict[str, str]
    process: subprocess.Popen
    stack: dict[str, Any]
    champion_before: str
    drifted_file: str
    drifted_batch_id: str
    drifted_sha256: str
    invalid_file: str
    invalid_sha256: str
    dropped_at: datetime
    storm_started: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return self.stack["prefect_api_url"]

    @property
    def credentials(self) -> dict[str, str]:
        """The home's stack credentials (``loopml up`` generated them)."""
        return json.loads((self.home / "credentials.json").read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_closed_loop(request, tmp_path_factory) -> ClosedLoop:
    """The session's closed loop, started once even when two modules ask for it."""
    cached = getattr(request.session, "_loopml_closed_loop", None)
    if cached is not None:
        return cached
    root = tmp_path_factory.mktemp("closed-loop")
    home, project_dir = root / "home", root / "project"
    init_project(SAMPLE, "churn", PROJECT, project_dir, positive_label="Yes")
    config_path = project_dir / "configs" / f"{PROJECT}.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["search"].update({"families": ["logistic"], "trials": 2, "timeout_seconds": 60})
    config["retraining"]["cooldown_seconds"] = COOLDOWN_SECONDS
    config["schedules"]["inbox_poll_seconds"] = 3
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    env = {**os.environ, "LOOPML_HOME": str(home), "OMP_NUM_THREADS": "1"}
    for variable in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(variable, None)
    command = [str(BIN / "loopml"), "up", "--json"]
    for option in ("--prefect-port", "--mlflow-port", "--evidently-port"):
        command += [option, str(free_port())]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=project_dir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "up.stderr", "w"),  # noqa: SIM115 - lives as long as the process
        start_new_session=True,
    )
    try:
        stack = _wait_for_stack(home / "stack.json", process, root / "up.stderr")
        timings = {"up_ready": time.monotonic() - started}
        trained = run_cli("train", PROJECT, "--json", cwd=project_dir, env=env, timeout=600)
        assert trained.returncode == 0, trained.stderr[-3000:]
        champion_before = last_json(trained.stdout)["version"]
        timings["train"] = time.monotonic() - started - timings["up_ready"]

        frame = pd.read_csv(SAMPLE)
        invalid = frame.sample(300, random_state=5).astype({"tenure": str})
        invalid.loc[invalid.index[:150], "tenure"] = "unknown"
        drifted = frame[(frame.tenure < 12) & (frame.internet_service == "Fiber optic")].head(600)
        inbox = home / "inbox" / PROJECT
        invalid_sha = _drop(inbox, "batch-001-invalid.csv", invalid)
        time.sleep(1.1)  # oldest first: the invalid batch is handled before the drifted one
        dropped_at = datetime.now(UTC)
        drifted_sha = _drop(inbox, "batch-002-drifted.csv", drifted)
        loop = ClosedLoop(
            home=home,
            project_dir=project_dir,
            env=env,
            process=process,
            stack=stack,
            champion_before=str(champion_before),
            drifted_file="batch-002-drifted.csv",
            drifted_batch_id="b" + drifted_sha[:16],
            drifted_sha256=drifted_sha,
            invalid_file="batch-001-invalid.csv",
            invalid_sha256=invalid_sha,
            dropped_at=dropped_at,
            timings=timings,
        )
        request.session._loopml_closed_loop = loop
        request.addfinalizer(loop.stop)
        _wait_for_inbox(inbox, 2, timeout=420)
        loop.timings["inbox_done"] = (datetime.now(UTC) - dropped_at).total_seconds()
        with _prefect(loop):
            runs = _wait_for_triggered_runs(1, timeout=120)
            assert runs, "the automation started no retraining"
            _wait_for_terminal(runs[0].id, timeout=600)
        loop.timings["loop_closed"] = (datetime.now(UTC) - dropped_at).total_seconds()
        return loop
    except BaseException:
        if getattr(request.session, "_loopml_closed_loop", None) is None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        print((root / "up.stderr").read_text()[-3000:])
        raise


@pytest.fixture(scope="session")
def closed_loop(request, tmp_path_factory) -> ClosedLoop:
    return start_closed_loop(request, tmp_path_factory)


# --------------------------------------------------------------------------- helpers


def _drop(inbox: Path, name: str, frame: pd.DataFrame) -> str:
    """The drop convention: write under a hidden .part name, then rename (atomic)."""
    staging = inbox / f".{name}.part"
    frame.to_csv(staging, index=False)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    staging.rename(inbox / name)
    return digest


def _wait_for_stack(stack_file: Path, process: subprocess.Popen, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"loopml up exited {process.returncode}: {log.read_text()}")
        if stack_file.is_file():
            return json.loads(stack_file.read_text())
        time.sleep(1)
    raise AssertionError(f"loopml up not ready in 240 s: {log.read_text()[-2000:]}")


def _wait_for_inbox(inbox: Path, files: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = _inbox_entries(inbox)
        final = {e["file"] for e in entries if e["status"] in ("processed", "quarantined")}
        if len(final) >= files:
            return entries
        time.sleep(2)
    raise AssertionError(f"inbox not processed in {timeout} s: {_inbox_entries(inbox)}")


def _inbox_entries(inbox: Path) -> list[dict[str, Any]]:
    state = inbox / "inbox.jsonl"
    if not state.is_file():
        return []
    return [json.loads(line) for line in state.read_text().splitlines() if line.strip()]


class _prefect:
    """Point this process's Prefect client at the stack, with its auth string (a context
    manager)."""

    def __init__(self, loop: ClosedLoop) -> None:
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        self._context = temporary_settings(
            updates={
                PREFECT_API_URL: loop.api_url,
                PREFECT_API_AUTH_STRING: loop.credentials["prefect_auth_string"],
            }
        )

    def __enter__(self) -> None:
        self._context.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)


def _retrain_deployment_id():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"retrain/retrain-{PROJECT}").id


def _triggered_runs() -> list:
    """Retrain runs an automation created (they carry a batch id; scheduled ones do not)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[_retrain_deployment_id()])
            )
        )
    return sorted(
        (run for run in runs if run.parameters.get("batch_id") and run.parameters.get("event")),
        key=lambda run: run.created,
    )


def _wait_for_triggered_runs(count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while True:
        runs = _triggered_runs()
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _wait_for_terminal(flow_run_id, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state_type.value in TERMINAL or time.monotonic() > deadline:
                return run
            time.sleep(2)


def _events(name: str, since: datetime) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(UTC)),
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"loopml.project.{PROJECT}"]),
    )
    with get_client(sync_client=True) as client:
        return list(client.read_events(filter=event_filter, limit=50).events)


def _emit_events(api_url: str, events: list[dict]) -> None:
    """Send events straight to ``api_url`` over the events websocket.

    (``emit_event`` reuses one process-wide worker bound to the first server it saw; the session
    also runs other servers.)
    """
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url) as client:
            for event in events:
                await client.emit(Event(**event))

    asyncio.run(send())


def _ledger(loop: ClosedLoop) -> list[dict[str, Any]]:
    path = loop.home / "ledger" / f"{PROJECT}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- tests


def test_batches_are_scored_monitored_and_filed_without_losing_a_byte(closed_loop) -> None:
    inbox = closed_loop.home / "inbox" / PROJECT
    entries = {e["file"]: e for e in _inbox_entries(inbox)}
    drifted, invalid = entries[closed_loop.drifted_file], entries[closed_loop.invalid_file]
    assert drifted["status"] == "processed"
    assert drifted["batch_id"] == closed_loop.drifted_batch_id
    assert drifted["rows"] == 600 and drifted["drift_detected"] is True
    assert invalid["status"] == "quarantined"
    kept = {
        closed_loop.drifted_sha256: inbox / "processed" / closed_loop.drifted_file,
        closed_loop.invalid_sha256: inbox / "quarantined" / closed_loop.invalid_file,
    }
    for digest, path in kept.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    assert not list(inbox.glob("*.csv")), "a batch was left in the inbox"
    quarantine = closed_loop.home / "quarantine" / PROJECT / invalid["batch_id"]
    assert (quarantine / "validation.json").is_file()
    print(f"\ntimings: {json.dumps({k: round(v, 1) for k, v in closed_loop.timings.items()})}")


def test_the_monitor_run_emitted_the_drift_event(closed_loop) -> None:
    from prefect.client.orchestration import get_client

    with _prefect(closed_loop):
        events = [
            event
            for event in _events("loopml.drift.detected", closed_loop.dropped_at)
            if event.payload.get("batch_id") == closed_loop.drifted_batch_id
        ]
        assert len(events) == 1
        event = events[0]
        assert event.payload["drift_share"] > 0 and event.payload["drifted_columns"]
        flow_runs = [r.id for r in event.related if r.id.startswith("prefect.flow-run.")]
        assert flow_runs, "the event names no flow run"
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_runs[0].removeprefix("prefect.flow-run."))
            flow = client.read_flow(run.flow_id)
            parent = (
                client.read_task_run(run.parent_task_run_id) if run.parent_task_run_id else None
            )
            inbox_run = client.read_flow_run(parent.flow_run_id) if parent else None
    assert flow.name == "monitor"
    assert run.parameters["batch_id"] == closed_loop.drifted_batch_id
    assert inbox_run is not None and inbox_run.deployment_id is not None  # the served inbox


def test_the_automation_started_exactly_one_retraining_for_the_batch(closed_loop) -> None:
    with _prefect(closed_loop):
        runs = _triggered_runs()
        drift = _events("loopml.drift.detected", closed_loop.dropped_at)
        degraded = _events("loopml.performance.degraded", closed_loop.dropped_at)
    batch_events = [
        e for e in drift + degraded if e.payload.get("batch_id") == closed_loop.drifted_batch_id
    ]
    first_event = min(e.occurred for e in batch_events)
    runs_for_batch = [r for r in runs if r.parameters["batch_id"] == closed_loop.drifted_batch_id]
    assert len(runs_for_batch) == 1, [r.parameters for r in runs]
    run = runs_for_batch[0]
    assert run.state_type.value == "COMPLETED", run.state
    assert run.parameters["event"] in ("loopml.drift.detected", "loopml.performance.degraded")
    created = (run.created - first_event).total_seconds()
    running = (run.start_time - first_event).total_seconds()
    print(
        f"\nevent -> retrain flow run created {created:.1f} s, running {running:.1f} s, "
        f"completed {(run.end_time - first_event).total_seconds():.1f} s"
    )
    assert 0 <= created < 30


def test_the_champion_moved_or_the_refusal_is_in_the_ledger(closed_loop) -> None:
    from mlflow.tracking import MlflowClient

    entries = _ledger(closed_loop)
    started = [e for e in entries if e["action"] == "retrain_started"]
    assert [e["batch_id"] for e in started] == [closed_loop.drifted_batch_id]
    decisions = [
        e
        for e in entries
        if e["action"] in ("promoted", "refused")
        and (e.get("trigger") or {}).get("batch_id") == closed_loop.drifted_batch_id
    ]
    assert len(decisions) == 1
    decision = decisions[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{closed_loop.home / 'mlflow.db'}")
    champion = str(client.get_model_version_by_alias(PROJECT, "champion").version)
    retrained = client.get_model_version(PROJECT, decision["version"])
    assert retrained.tags["loopml.batch_id"] == closed_loop.drifted_batch_id
    if decision["action"] == "promoted":
        assert champion == decision["version"] != closed_loop.champion_before
        assert retrained.tags["loopml.gate"] == "promoted"
    else:
        assert champion == closed_loop.champion_before
        assert retrained.tags["loopml.gate"] == "refused" and decision["reason"]


def test_an_event_storm_inside_the_cooldown_starts_no_second_retraining(closed_loop) -> None:
    batch_ids = [closed_loop.drifted_batch_id] + [f"bstorm{index}" for index in range(9)]
    resource = {"prefect.resource.id": f"loopml.project.{PROJECT}", "loopml.project": PROJECT}
    with _prefect(closed_loop):
        started = datetime.now(UTC)
        _emit_events(
            closed_loop.api_url,
            [
                {
                    "event": "loopml.drift.detected",
                    "resource": resource,
                    "payload": {"batch_id": batch_ids[index % 10], "drift_share": 0.9},
                }
                for index in range(20)
            ],
        )
        deadline = time.monotonic() + 30
        while len(_events("loopml.drift.detected", started)) < 20 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(_events("loopml.drift.detected", started)) == 20
        # A sentinel sent after the storm goes through the same triggers service; once its
        # notification is in the sink, every storm event has been evaluated and any late
        # firing has created its run. The condition is read, not slept on.
        _emit_events(
            closed_loop.api_url,
            [
                {
                    "event": "loopml.model.promoted",
                    "resource": resource,
                    "payload": {"version": "sentinel", "reason": "storm sentinel"},
                }
            ],
        )
        sink = Path(closed_loop.stack["notifications_file"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "vsentinel" not in (
            sink.read_text() if sink.is_file() else ""
        ):
            time.sleep(0.5)
        assert "vsentinel" in sink.read_text()
        runs = _triggered_runs()
    assert [r.parameters["batch_id"] for r in runs] == [closed_loop.drifted_batch_id]


def test_the_same_batch_never_retrains_twice(closed_loop) -> None:
    """The flow-level guard behind the cooldown: a run for a retrained batch does nothing."""
    from prefect.deployments import run_deployment

    versions_before = _registered_versions(closed_loop)
    with _prefect(closed_loop):
        run = run_deployment(
            f"retrain/retrain-{PROJECT}",
            parameters={
                "project": PROJECT,
                "project_dir": str(closed_loop.project_dir),
                "batch_id": closed_loop.drifted_batch_id,
            },
            timeout=300,
        )
    assert run.state_type.value == "COMPLETED", run.state
    started = [e for e in _ledger(closed_loop) if e["action"] == "retrain_started"]
    assert [e["batch_id"] for e in started] == [closed_loop.drifted_batch_id]
    assert _registered_versions(closed_loop) == versions_before


def test_promotions_reach_the_notification_sink_and_a_quarantine_is_no_failure(
    closed_loop,
) -> None:
    """The invalid batch's score run ends in its own state, Quarantined (tagged with the
    project), and no failure notification names it; the promotions are notified."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with _prefect(closed_loop), get_client(sync_client=True) as client:
        score_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["score"]))
        )
    quarantined = [run for run in score_runs if run.parameters["data"].endswith("invalid.csv")]
    assert [run.state_name for run in quarantined] == ["Quarantined"]
    assert {"loopml", f"project:{PROJECT}"} <= set(quarantined[0].tags)

    path = Path(closed_loop.stack["notifications_file"])
    promoted = [e for e in _ledger(closed_loop) if e["action"] == "promoted"]
    expected = [
        f"{PROJECT} v{entry['version']} promoted to champion"
        for entry in promoted
        if (entry.get("trigger") or {}).get("batch_id")
    ]
    deadline = time.monotonic() + 60
    while True:  # the promotions come after the quarantine: their notes arrive after its
        notes = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        )
        subjects = [n["subject"] for n in notes]
        if all(any(e in s for s in subjects) for e in expected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for text in expected:
        assert any(text in s for s in subjects), subjects
    assert not [s for s in subjects if quarantined[0].name in s], subjects


def _registered_versions(loop: ClosedLoop) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{loop.home / 'mlflow.db'}")
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{PROJECT}'"))
