"""The layer that runs the loop: prefect.yaml, automations on a real server, ``loopml up``.

Against real servers (no mocks): ``prefect deploy --all`` from the repository, the automations
``loopml`` creates (read back through the API, then fired with real events), and ``loopml up``
as a user starts and stops it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from loopml.data import file_hash
from tests.conftest import BIN, REPO, SAMPLE, free_port, init_project, last_json

pytestmark = pytest.mark.timeout(300)

ENTRYPOINTS = {
    "train": "flows.training:train_flow",
    "score": "flows.scoring:score_flow",
    "monitor": "flows.monitoring:monitor_flow",
    "retrain": "flows.retraining:retrain_flow",
    "inbox": "flows.inbox:inbox_flow",
}


def make_project(project_dir: Path, name: str, **overrides: dict) -> Path:
    """``loopml init`` on the sample, then cheap search settings (and ``overrides``)."""
    init_project(SAMPLE, "churn", name, project_dir, positive_label="Yes")
    path = project_dir / "configs" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    config["search"].update({"families": ["logistic"], "trials": 2, "timeout_seconds": 60})
    for section, values in overrides.items():
        config[section].update(values)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return project_dir


def prefect_cli(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )


# --------------------------------------------------------------------------- prefect.yaml


@pytest.mark.slow
def test_prefect_deploy_all_creates_every_deployment(prefect_server, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project_dir = make_project(tmp_path / "project", "deployed")
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server.api_url,
        "PREFECT_HOME": str(prefect_server.home),
        "LOOPML_PROJECT": "deployed",
        "LOOPML_PROJECT_DIR": str(project_dir),
    }
    pool = prefect_cli("work-pool", "create", "loopml-process", "--type", "process", env=env)
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr, pool.stderr
    deployed = prefect_cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env
    )
    assert deployed.returncode == 0, deployed.stdout[-2000:] + deployed.stderr[-2000:]

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        get_client(sync_client=True) as client,
    ):
        deployments = {
            flow: client.read_deployment_by_name(f"{flow}/{flow}-deployed")
            for flow in ("train", "score", "monitor", "retrain", "inbox")
        }
        automations = client.read_automations_by_name(
            "loopml deployed: retrain on drift or degradation (prefect.yaml)"
        )
    for flow, deployment in deployments.items():
        assert deployment.work_pool_name == "loopml-process", flow
        assert deployment.parameters == {"project": "deployed", "project_dir": str(project_dir)}
        assert deployment.entrypoint == ENTRYPOINTS[flow]
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(project_dir)}}
        ]
    retrain, inbox, monitor = deployments["retrain"], deployments["inbox"], deployments["monitor"]
    assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 0"]
    assert retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options.collision_strategy.value == "ENQUEUE"
    # No polling: `loopml up` starts inbox runs when a file is ready; the sweep stays inactive.
    assert [(s.schedule.interval.total_seconds(), s.active) for s in inbox.schedules] == [
        (15, False)
    ]
    assert inbox.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert [(s.schedule.cron, s.active) for s in monitor.schedules] == [("0 * * * *", False)]

    assert len(automations) == 1
    trigger, action = automations[0].trigger, automations[0].actions[0]
    assert trigger.expect == {"loopml.drift.detected", "loopml.performance.degraded"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "loopml.project.deployed"}
    assert (trigger.posture.value, trigger.threshold) == ("Reactive", 1)
    assert trigger.within.total_seconds() == 300
    assert action.type == "run-deployment" and action.deployment_id == retrain.id
    assert action.parameters["batch_id"] == "{{ event.payload.get('batch_id') }}"


# --------------------------------------------------------------------------- automations


def test_automations_are_idempotent_and_a_burst_runs_one_retraining(
    prefect_api, loopml_home, tmp_path
) -> None:
    """Automations from deployments/automations/ read back through the API, then fired.

    Storm: 20 drift events for one project within about a second, with 10 distinct batch ids
    (each id twice). Reactive + threshold 1 + within=cooldown: exactly one flow run of the retrain
    deployment, carrying the batch id of the event that fired it. Which event of the burst that is
    is the server's choice: events sent within milliseconds are not processed in send order, so
    the run carries one of the storm's ids, not necessarily the first. (No runner here: the run
    stays Scheduled.)
    A promotion event reaches the local notification sink through the Custom Webhook block.
    """
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    from flows.deployments import build_deployments
    from loopml.cli.stack.deployments import apply_project_automations
    from loopml.cli.stack.notifications import NotificationSink
    from loopml.config import load_config

    project_dir = make_project(tmp_path / "project", "stormy", retraining={"cooldown_seconds": 120})
    config = load_config("stormy", project_dir)
    retrain = next(
        d for d in build_deployments(project_dir, [config]) if d.name == "retrain-stormy"
    )
    retrain_id = str(retrain.apply())
    sink = NotificationSink(tmp_path / "notifications.jsonl").start()
    names = [
        "loopml stormy: retrain on drift or degradation",
        "loopml stormy: retrain on new labelled evidence",
        "loopml: notify on failed flow runs",
        "loopml: notify on model promotion",
    ]
    try:
        first = apply_project_automations(project_dir, [config], webhook_url=sink.url)
        again = apply_project_automations(project_dir, [config], webhook_url=sink.url)
        assert sorted(a["name"] for a in first["automations"]) == sorted(names)
        assert [a["action"] for a in again["automations"]] == ["updated"] * 4
        assert {a["id"] for a in first["automations"]} == {a["id"] for a in again["automations"]}

        with get_client(sync_client=True) as client:
            for name in names:
                assert len(client.read_automations_by_name(name)) == 1, name
        retraining = Automation.read(name=names[0])
        assert retraining.trigger.expect == {"loopml.drift.detected", "loopml.performance.degraded"}
        assert retraining.trigger.match.model_dump() == {
            "prefect.resource.id": "loopml.project.stormy"
        }
        assert retraining.trigger.posture.value == "Reactive"
        assert (retraining.trigger.threshold, retraining.trigger.within.total_seconds()) == (1, 120)
        (action,) = retraining.actions
        assert (action.type, str(action.deployment_id)) == ("run-deployment", retrain_id)
        assert action.parameters == {
            "project": "stormy",
            "project_dir": str(project_dir),
            "batch_id": "{{ event.payload.get('batch_id') }}",
            "event": "{{ event.event }}",
        }
        evidence = Automation.read(name=names[1])
        assert evidence.trigger.expect == {"loopml.retraining.evidence"}
        assert evidence.trigger.within.total_seconds() == 0  # every new labelled batch
        assert evidence.actions[0].parameters == action.parameters
        failed = Automation.read(name=names[2])
        assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
        assert failed.actions[0].type == "send-notification"
        assert str(failed.actions[0].block_document_id) == first["notification_block_id"]

        resource = {"prefect.resource.id": "loopml.project.stormy", "loopml.project": "stormy"}
        storm_started = datetime.now(UTC)
        _emit_events(
            prefect_api,
            [
                {
                    "event": "loopml.drift.detected",
                    "resource": resource,
                    "payload": {"batch_id": f"bstorm{index % 10}", "drift_share": 0.5},
                }
                for index in range(20)
            ],
        )
        storm_seconds = (datetime.now(UTC) - storm_started).total_seconds()
        runs = _wait_for_runs(retrain_id, expected=1, timeout=60)
        latency = (runs[0].created - storm_started).total_seconds()

        # An event sent after the storm goes through the same triggers service: once its
        # notification has arrived, every storm event has been evaluated, so a late second
        # retraining would already exist. No sleep: the condition is read from the API.
        _emit_events(
            prefect_api,
            [
                {
                    "event": "loopml.model.promoted",
                    "resource": resource,
                    "payload": {
                        "version": "7",
                        "previous_champion": "6",
                        "reason": "better",
                        "batch_id": "b1",
                    },
                }
            ],
        )
        notifications = _wait_for_lines(sink.path, timeout=60)
        assert notifications[0]["subject"] == "loopml: stormy v7 promoted to champion"
        assert "Reason: better" in notifications[0]["body"]

        runs = _wait_for_runs(retrain_id, expected=1, timeout=0)
        assert len(runs) == 1, [r.parameters for r in runs]
        assert runs[0].parameters["batch_id"] in {f"bstorm{index}" for index in range(10)}
        assert runs[0].parameters["event"] == "loopml.drift.detected"
        print(
            f"\nstorm of 20 events in {storm_seconds:.2f} s -> 1 run, created {latency:.2f} s "
            "after the first event"
        )
    finally:
        sink.stop()
        with get_client(sync_client=True) as client:  # the session's server is shared
            for name in names:
                for automation in client.read_automations_by_name(name):
                    client.delete_automation(automation.id)


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


def _wait_for_runs(deployment_id: str, expected: int, timeout: float) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            triggered = [run for run in runs if run.parameters.get("batch_id")]
            if len(triggered) >= expected or time.monotonic() > deadline:
                return triggered
            time.sleep(0.5)


def _wait_for_lines(path: Path, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        time.sleep(0.5)
    raise AssertionError(f"no notification reached {path} within {timeout} s")


# --------------------------------------------------------------------------- the inbox


def test_inbox_takes_only_settled_files_and_never_repeats_a_batch(
    prefect_api, loopml_home, tmp_path
) -> None:
    """Without a champion nothing is scored, but the inbox rules already apply: hidden and
    still-changing files are left alone, a batch seen before is filed as a duplicate (bytes
    intact), and new batches wait in place for a champion."""
    import pandas as pd

    from flows.inbox import inbox_flow
    from loopml.data import file_hash

    project_dir = make_project(tmp_path / "project", "inboxed")
    inbox = loopml_home / "inbox" / "inboxed"
    inbox.mkdir(parents=True)
    frame = pd.read_csv(SAMPLE)
    now = time.time()

    def write(name: str, rows: pd.DataFrame, age_seconds: float) -> Path:
        path = inbox / name
        rows.to_csv(path, index=False)
        os.utime(path, (now - age_seconds, now - age_seconds))
        return path

    first = write("a.csv", frame.iloc[:100], age_seconds=120)
    copy = write("b.csv", frame.iloc[:100], age_seconds=90)  # same bytes as a.csv
    known = write("c.csv", frame.iloc[100:200], age_seconds=60)
    fresh = write("d.csv", frame.iloc[200:300], age_seconds=0)  # still being written
    partial = write(".e.csv.part", frame.iloc[300:400], age_seconds=120)
    known_bytes = known.read_bytes()
    (inbox / "inbox.jsonl").write_text(
        json.dumps({"file": "c-old.csv", "batch_id": "b" + file_hash(known), "status": "processed"})
        + "\n"
    )

    result = inbox_flow("inboxed", str(project_dir), settle_seconds=30)

    statuses = {entry["file"]: entry["status"] for entry in result["files"]}
    assert statuses == {"b.csv": "duplicate", "c.csv": "duplicate"}
    assert result["waiting"] == 1  # a.csv: no champion yet
    assert first.is_file() and fresh.is_file() and partial.is_file()
    assert not copy.exists() and not known.exists()
    assert (inbox / "processed" / "c.csv").read_bytes() == known_bytes
    assert (inbox / "processed" / "b.csv").read_bytes() == first.read_bytes()


# --------------------------------------------------------------------------- loopml up


def test_up_refuses_a_port_in_use_with_one_clear_line(tmp_path) -> None:
    project_dir = make_project(tmp_path / "project", "ports")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / "loopml"), "up", "--prefect-port", str(port)],
            cwd=project_dir,
            env={**os.environ, "LOOPML_HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} (prefect) already in use" in lines[0]
    assert "--prefect-port" in lines[0]
    assert not (tmp_path / "home" / "stack.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_up_serves_everything_writes_stack_json_and_stops_on_sigterm(tmp_path) -> None:
    project_dir = make_project(tmp_path / "project", "upped")
    home = tmp_path / "home"
    ports = {"prefect": free_port(), "mlflow": free_port(), "evidently": free_port()}
    env = {**os.environ, "LOOPML_HOME": str(home)}
    for variable in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(variable, None)
    command = [str(BIN / "loopml"), "up", "--json"]
    for name, port in ports.items():
        command += [f"--{name}-port", str(port)]
    process = subprocess.Popen(
        command, cwd=project_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The MLflow UI creates a fresh home's store: up holds the store's creation lock until
        # the UI answers, so that a command started meanwhile waits instead of colliding.
        store_lock, held_while_starting = home / "mlflow.db.lock", False
        deadline = time.monotonic() + 400
        while not (home / "stack.json").is_file() and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            held_while_starting |= _lock_is_held(store_lock)
            time.sleep(0.05)
        stack = _wait_for_stack(home / "stack.json", process, timeout=10)
        assert held_while_starting and not _lock_is_held(store_lock)
        assert stack["pid"] == process.pid
        assert stack["projects"] == ["upped"]
        assert stack["prefect_api_url"] == f"http://127.0.0.1:{ports['prefect']}/api"
        assert _get(f"{stack['prefect_api_url']}/health") == "true"
        assert "<html" in _get(stack["prefect_ui_url"]).lower()
        assert _get(f"{stack['mlflow_url']}/health").strip() == "OK"
        assert stack["mlflow_url"] == f"http://127.0.0.1:{ports['mlflow']}"
        assert _get(stack["evidently_url"])  # the Evidently UI's page
        assert json.loads(_get(stack["notifications_url"]))["status"] == "ok"
        assert sorted(stack["deployments"]) == sorted(
            f"{flow}/{flow}-upped" for flow in ("train", "score", "monitor", "retrain", "inbox")
        )
        assert "loopml upped: retrain on drift or degradation" in stack["automations"]
        children = stack["children"]
        assert set(children) == {"prefect-server", "mlflow", "evidently", "runner"}
        assert all(_alive(pid) for pid in children.values())
        assert (home / "logs" / "runner.log").is_file()
        # Its runs start as forks of a process that has the flows imported (forkserver.py).
        assert "runs start as forks of a process with the flows imported" in _wait_for_text(
            home / "logs" / "runner.log", "runs start as", timeout=60
        )
        assert (home / "inbox" / "upped").is_dir()

        # Later CLI calls find the running server (server.json) and its auth string.
        from loopml.settings import load_settings

        clean_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        assert load_settings(clean_env).prefect_api_url == stack["prefect_api_url"]
        _assert_locked(stack, json.loads((home / "credentials.json").read_text()))
        validated = subprocess.run(
            [str(BIN / "loopml"), "validate", "upped", "--data", str(SAMPLE), "--json"],
            cwd=project_dir,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert validated.returncode == 0, validated.stderr  # loopml itself is not locked out
        assert (
            json.loads((home / "server.json").read_text())["pid"]
            == (stack["prefect_server_supervisor_pid"])
        )

        # No polling: a ready file starts the inbox's first and only run, which files it (a
        # batch seen before) and up prints its outcome.
        credentials = json.loads((home / "credentials.json").read_text())
        inbox_runs = _inbox_runs(stack, credentials)
        assert inbox_runs == []
        inbox = home / "inbox" / "upped"
        seen = inbox / "seen.csv"
        seen.write_text(SAMPLE.read_text()[:5000].rsplit("\n", 1)[0] + "\n")
        batch_id = "b" + file_hash(seen)
        (inbox / "inbox.jsonl").write_text(
            json.dumps({"file": "old.csv", "batch_id": batch_id, "status": "processed"}) + "\n"
        )
        outcome = _wait_for_outcome(inbox / "inbox.jsonl", "duplicate", timeout=120)
        assert outcome["batch_id"] == batch_id
        inbox_runs = _inbox_runs(stack, credentials)
        assert [run.state_name for run in inbox_runs] == ["Completed"]
        assert {"loopml", "project:upped"} <= set(inbox_runs[0].tags)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
        stop_seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
            # up's background Prefect server outlives a SIGKILL of up by design: stop it.
            subprocess.run([str(BIN / "loopml"), "down"], env=env, capture_output=True)
    print(f"\nloopml up: ready in {stack['startup_seconds']} s, stopped in {stop_seconds:.1f} s")
    assert process.returncode == 0, stderr[-2000:]
    assert last_json(stdout)["stopped"] is True
    assert last_json(stdout)["signal"] == "SIGTERM"
    assert stderr.index("deployment runner: stopped") < stderr.index("Prefect server: stopped")
    assert f"inbox upped: seen.csv (batch {batch_id}) duplicate" in stderr
    assert not (home / "stack.json").exists()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [name for name, pid in children.items() if _alive(pid)]
    assert _fork_servers_of(home) == []  # it leaves with the runner
    for port in ports.values():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def _wait_for_text(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if text in content:
            return content
        time.sleep(0.5)
    return content


def _fork_servers_of(home: Path) -> list[int]:
    """Pids of multiprocessing fork servers still running for this home."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"multiprocessing.forkserver" in command and f"LOOPML_HOME={home}".encode() in environ:
            found.append(int(entry.name))
    return found


def _status(
    url: str, body: dict | None = None, headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def _basic(user_and_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_and_password.encode()).decode()}


def _assert_locked(stack: dict, credentials: dict) -> None:
    """Anonymous and cross-origin writes to every server of the stack are refused; the same
    calls with the home's credentials pass (issue 13's hostile-page findings)."""
    api = stack["prefect_api_url"]
    # Prefect: a page's create_flow_run without the auth string; a foreign origin's preflight.
    assert _status(f"{api}/flow_runs/", {"flow_id": str(uuid.uuid4())})[0] == 401
    assert _status(f"{api}/flows/filter", {})[0] == 401
    assert _status(f"{api}/flows/filter", {}, _basic(credentials["prefect_auth_string"]))[0] == 200
    _, preflight = _status(
        f"{api}/flow_runs/",
        None,
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        method="OPTIONS",
    )
    assert preflight.get("access-control-allow-origin") in (None, stack["prefect_ui_url"])
    # MLflow: the anonymous alias move that made a refused version champion.
    alias = f"{stack['mlflow_url']}/api/2.0/mlflow/registered-models/alias"
    assert _status(alias, {"name": "upped", "alias": "champion", "version": "1"})[0] == 401
    search = f"{stack['mlflow_url']}/api/2.0/mlflow/registered-models/search"
    user = f"{credentials['mlflow_username']}:{credentials['mlflow_password']}"
    assert _status(search, None, _basic(user), method="GET")[0] == 200
    # Evidently: project creation needs the secret.
    projects = f"{stack['evidently_url']}/api/projects"
    assert _status(projects, {"name": "forged"})[0] in (401, 403)
    secret = {"evidently-secret": credentials["evidently_secret"]}
    assert _status(projects, {"name": "allowed"}, secret)[0] in (200, 201)
    # The notification sink: a forged notification is not written.
    sink = stack["notifications_url"]
    assert _status(sink, {"subject": "forged"})[0] == 401
    bearer = {"Authorization": f"Bearer {credentials['sink_token']}"}
    assert _status(sink, {"subject": "from loopml"}, bearer)[0] == 204
    written = Path(stack["notifications_file"]).read_text()
    assert "from loopml" in written and "forged" not in written


def _inbox_runs(stack: dict, credentials: dict) -> list:
    """Runs of the inbox deployment that started (a run the watcher created may still be
    scheduled: wait for the one that ran; none at all is returned at once)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from loopml.cli.stack.deployments import prefect_api

    deadline = time.monotonic() + 60
    with prefect_api(stack["prefect_api_url"], credentials["prefect_auth_string"]):
        while True:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=["inbox"]))
                )
            if all(run.state is not None and run.state.is_final() for run in runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"inbox runs not finished: {[r.state_name for r in runs]}")
            time.sleep(0.5)


def _wait_for_outcome(path: Path, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.is_file() else []
        for line in lines:
            entry = json.loads(line)
            if entry.get("status") == status:
                return entry
        time.sleep(0.5)
    raise AssertionError(f"no {status} outcome in {path} within {timeout} s")


def _wait_for_stack(stack_file: Path, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"loopml up exited {process.returncode}: {process.stderr.read()}")
        if stack_file.is_file():
            return json.loads(stack_file.read_text())
        time.sleep(1)
    raise AssertionError(f"no {stack_file} within {timeout} s")


def _lock_is_held(path: Path) -> bool:
    """Whether another process holds ``path``'s lock (``flock``) right now."""
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        return response.read().decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): it is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
