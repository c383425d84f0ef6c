"""The embedded stack behind ``loopml up``: servers, the deployment runner, automations.

One process (``loopml up``) owns everything and stops it in order on Ctrl-C or SIGTERM:

    Prefect server   prefect server start (SQLite under $LOOPML_HOME/prefect)
    MLflow UI        mlflow server on the same store as the CLI (sqlite:///$LOOPML_HOME/mlflow.db)
    Evidently UI     evidently ui --workspace $LOOPML_HOME/evidently
    notification sink  a tiny HTTP receiver appending to $LOOPML_HOME/notifications.jsonl
    runner           ``loopml serve``: every project's deployments served with their schedules
    automations      rendered from deployments/automations/*.yaml, created by name

Process management here is plain Python. The few Prefect calls (deployments, blocks,
automations) import Prefect inside the functions that need it, so importing this module stays
free of Prefect and of side effects.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from loopml.config import ProjectConfig, load_config
from loopml.errors import LoopmlError
from loopml.settings import Settings, prefect_environment

HOST = "127.0.0.1"
NOTIFICATION_BLOCK = "loopml-notifications"
RUNNER_POLL_SECONDS = 2
# Prefect state types of a flow run that holds a slot or a process (strings: no import at load).
IN_FLIGHT_STATES = ("PENDING", "RUNNING", "CANCELLING")
FLOW_NAMES = ("train", "score", "monitor", "retrain", "inbox")
AUTOMATIONS_DIR_VARIABLE = "LOOPML_AUTOMATIONS_DIR"
RUNNER_START_SIGNAL_VARIABLE = "LOOPML_RUNNER_START_SIGNAL"  # set by ``up`` for its runner
PROJECT_AUTOMATION_PREFIX = "project-"  # files named project-*.yaml are rendered per project
STARTUP_TIMEOUTS = {"prefect": 120.0, "mlflow": 90.0, "evidently": 60.0, "runner": 120.0}


class StackError(LoopmlError):
    """The stack cannot start or one of its services stopped unexpectedly."""


@dataclass(frozen=True)
class StackPorts:
    """Loopback ports of the three UIs."""

    prefect: int = 4200
    mlflow: int = 5000
    evidently: int = 8000

    def as_dict(self) -> dict[str, int]:
        return {"prefect": self.prefect, "mlflow": self.mlflow, "evidently": self.evidently}


def deployment_name(flow_name: str, project: str) -> str:
    """The served deployment of ``flow_name`` for ``project``, e.g. ``retrain-telco``."""
    return f"{flow_name}-{project}"


# --------------------------------------------------------------------------- discovery, ports


def discover_projects(project_dir: Path, names: Iterable[str] = ()) -> list[ProjectConfig]:
    """The projects to serve: ``names`` if given, else every ``configs/*.yaml`` in the folder.

    Raises:
        StackError: no project was found.
        ProjectNotFound, ConfigError: a named project is unknown or a config is invalid.
    """
    wanted = list(dict.fromkeys(names))
    if not wanted:
        wanted = sorted(path.stem for path in (project_dir / "configs").glob("*.yaml"))
    if not wanted:
        raise StackError(
            f"no project to serve: {project_dir / 'configs'} holds no *.yaml "
            "(create one with 'loopml init', or pass --project-dir)"
        )
    return [load_config(name, project_dir) for name in wanted]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: a port with only TIME_WAIT leftovers of a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(ports: StackPorts) -> None:
    """Raise one clear error naming every requested port that is taken.

    Raises:
        StackError: a port is in use (or listed twice).
    """
    requested = ports.as_dict()
    if len(set(requested.values())) != len(requested):
        raise StackError(f"the ports must differ: {requested}")
    busy = [f"{port} ({name})" for name, port in requested.items() if not port_is_free(port)]
    if busy:
        options = " / ".join(f"--{name}-port" for name, _ in requested.items())
        raise StackError(
            f"port {', '.join(busy)} already in use on {HOST}; stop what holds it or pick "
            f"other ports with {options}"
        )


def read_stack_file(stack_file: Path) -> dict[str, Any] | None:
    """The record of a running ``loopml up``, or ``None`` when none is alive."""
    try:
        stack = json.loads(stack_file.read_text())
        os.kill(int(stack["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return stack


def write_stack_file(stack_file: Path, record: dict[str, Any]) -> None:
    """Write ``stack.json`` atomically (other CLI calls read it while we write)."""
    stack_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = stack_file.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(record, indent=2, default=str))
    scratch.replace(stack_file)


# --------------------------------------------------------------------------- child processes


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when ``loopml up`` dies (even by
    SIGKILL). libc is loaded here, in the parent: the forked child only makes one syscall."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None

    def hook() -> None:  # pragma: no cover - runs in the forked child
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class ChildProcess:
    """One service started by the stack, in its own process group, logging to a file."""

    name: str
    label: str
    process: subprocess.Popen
    log_path: Path
    url: str | None = None

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, characters: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


def start_child(
    name: str, label: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path
) -> ChildProcess:
    """Start ``command`` in a new session with stdout/stderr to ``log_dir/NAME.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own group: Ctrl-C reaches us, we stop children in order
            preexec_fn=_die_with_parent_hook(),
        )
    return ChildProcess(name=name, label=label, process=process, log_path=log_path)


def stop_child(
    child: ChildProcess, timeout: float = 20.0, first_signal: int = signal.SIGTERM
) -> int:
    """Stop a child and everything it started (its process group); returns its exit code."""
    process = child.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if child.name == "runner":
                # Only the runner itself: it pauses its schedules and exits (about 5 s); its
                # flow-run subprocesses share the group and are stopped below if still there.
                process.send_signal(first_signal)
            else:
                os.killpg(process.pid, first_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
    # Grandchildren (uvicorn workers, flow-run subprocesses) share the group: leave none behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


def wait_for_http(url: str, timeout: float, child: ChildProcess | None = None) -> float:
    """Poll ``url`` until it answers below 500; returns the seconds waited.

    Raises:
        StackError: the child exited, or ``url`` did not answer within ``timeout``.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if child is not None and not child.running():
            raise StackError(
                f"{child.label} exited with code {child.process.returncode} before it answered; "
                f"see {child.log_path}: {_last_line(child.log_tail())}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    where = f"; see {child.log_path}" if child else ""
    raise StackError(f"{url} did not answer within {timeout:.0f} s{where}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def child_environment(settings: Settings, prefect_api_url: str | None) -> dict[str, str]:
    """The environment of every child: this installation, telemetry off, the stack's server."""
    env = {**os.environ, **prefect_environment(settings)}
    env.update(
        {
            "LOOPML_HOME": str(settings.home),
            "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "MLFLOW_REGISTRY_URI": settings.mlflow_registry_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # 0.5 GB instead of 1.8 GB
            "EVIDENTLY_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    else:
        env.pop("PREFECT_API_URL", None)
    return env


def prefect_server_command(port: int) -> list[str]:
    return [_console_script("prefect"), "server", "start", "--host", HOST, "--port", str(port)]


def mlflow_server_command(settings: Settings, port: int) -> list[str]:
    return [
        _console_script("mlflow"),
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        settings.mlflow_tracking_uri,
        "--registry-store-uri",
        settings.mlflow_registry_uri,
        # Clients write artifacts straight to this folder (same machine); the UI reads them.
        "--default-artifact-root",
        settings.artifacts_dir.as_uri(),
        "--no-serve-artifacts",
    ]


def evidently_ui_command(settings: Settings, port: int) -> list[str]:
    return [
        _console_script("evidently"),
        "ui",
        "--workspace",
        str(settings.evidently_workspace),
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def runner_command(project_dir: Path, projects: Iterable[str]) -> list[str]:
    command = [sys.executable, "-m", "loopml.cli_stack", "serve", "--project-dir", str(project_dir)]
    for name in projects:
        command += ["--project", name]
    return command


def _console_script(name: str) -> str:
    """A console script of this environment (the venv's, not whatever PATH finds first)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def embedded_mlflow(settings: Settings) -> bool:
    """Whether MLflow is the embedded store (then ``up`` serves its UI) or a remote server."""
    return not settings.mlflow_tracking_uri.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- notification sink


class NotificationSink:
    """A local HTTP receiver for Prefect notification blocks: one JSON line per notification.

    Prefect's server POSTs ``{"subject", "body"}`` (a Custom Webhook block) here; the line gets
    the time it arrived. Works offline and needs nothing but the standard library.
    """

    def __init__(self, path: Path, host: str = HOST, port: int = 0) -> None:
        self.path = path
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    message = json.loads(raw or b"{}")
                except ValueError:
                    message = {"body": raw.decode(errors="replace")}
                if not isinstance(message, dict):
                    message = {"body": message}
                sink.append(message)
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                payload = json.dumps({"status": "ok", "file": str(sink.path)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the JSON lines are the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="loopml-notifications", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/notify"

    def append(self, message: dict[str, Any]) -> None:
        record = {"received_at": datetime.now(UTC).isoformat(), **message}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")

    def start(self) -> NotificationSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- Prefect: deployments


def build_deployments(project_dir: Path, configs: Iterable[ProjectConfig]) -> list[Any]:
    """Every project's served deployments (``train-NAME``, ``score-NAME``, ``retrain-NAME``...).

    Schedules come from each project's config; retraining runs one at a time per project
    (``concurrency_limit`` 1, ENQUEUE) and the inbox never overlaps itself (CANCEL_NEW).
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.inbox import inbox_flow
    from flows.retraining import retrain_flow
    from flows.scoring import score_flow
    from flows.training import train_flow

    one_at_a_time = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
    )
    skip_if_busy = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
    )
    folder = str(project_dir.resolve())
    deployments = []
    for config in configs:
        name = config.name
        common = {
            "parameters": {"project": name, "project_dir": folder},
            "tags": ["loopml", f"project:{name}"],
            "entrypoint_type": EntrypointType.MODULE_PATH,  # flows/ is installed: no file paths
            "paused": False,
        }
        schedules = config.schedules
        deployments += [
            train_flow.to_deployment(
                name=deployment_name("train", name),
                description=f"Train, register and gate a new {name} model.",
                **common,
            ),
            score_flow.to_deployment(
                name=deployment_name("score", name),
                description=f"Score a {name} batch with the champion (pass data=FILE).",
                **common,
            ),
            _monitor_deployment(name, schedules.monitor, common),
            retrain_flow.to_deployment(
                name=deployment_name("retrain", name),
                description=(
                    f"Retrain {name} on reference plus recent labelled data; runs on "
                    "schedule and when drift or degradation is detected."
                ),
                cron=schedules.retrain,
                concurrency_limit=one_at_a_time,
                **common,
            ),
            inbox_flow.to_deployment(
                name=deployment_name("inbox", name),
                description=f"Score and monitor new batches dropped into inbox/{name}/.",
                interval=schedules.inbox_poll_seconds,
                concurrency_limit=skip_if_busy,
                **common,
            ),
        ]
    return deployments


def _monitor_deployment(name: str, cron: str | None, common: dict[str, Any]) -> Any:
    """The monitor deployment; scheduled only when the flow can run without a batch argument."""
    import inspect

    from flows.monitoring import monitor_flow

    data_parameter = inspect.signature(monitor_flow.fn).parameters.get("data")
    can_schedule = (
        data_parameter is not None and data_parameter.default is not inspect.Parameter.empty
    )
    return monitor_flow.to_deployment(
        name=deployment_name("monitor", name),
        description=f"Drift and performance of {name} batches against the champion's reference.",
        cron=cron if can_schedule else None,
        **common,
    )


def serve_projects(
    project_dir: Path,
    configs: list[ProjectConfig],
    limit: int | None = None,
    start_signal: Path | None = None,
    start_timeout: float = 300.0,
) -> None:
    """Serve the projects' deployments until interrupted (the runner child of ``loopml up``).

    With ``start_signal``, the flows are imported first (the slow part) and serving waits until
    that file exists: ``loopml up`` starts the runner beside the server and says when to go.

    Raises:
        StackError: ``start_signal`` did not appear within ``start_timeout``.
    """
    from prefect import serve

    deployments = build_deployments(project_dir, configs)
    if start_signal is not None:
        deadline = time.monotonic() + start_timeout
        while not start_signal.exists():
            if time.monotonic() > deadline:
                raise StackError(f"no start signal {start_signal} within {start_timeout:.0f} s")
            time.sleep(0.2)
    serve(
        *deployments,
        limit=limit,
        print_starting_message=True,
        pause_on_shutdown=True,  # no scheduled runs pile up while nothing serves them
    )


def wait_for_deployments(
    names: list[str],
    timeout: float,
    runner: ChildProcess | None = None,
    updated_after: datetime | None = None,
) -> dict[str, str]:
    """Wait until every ``flow/deployment`` name exists (and, with ``updated_after``, has been
    applied since then, unpaused: the runner serves it); returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            for name in names:
                if name in found:
                    continue
                with contextlib.suppress(ObjectNotFound):
                    deployment = client.read_deployment_by_name(name)
                    fresh = updated_after is None or (
                        not deployment.paused
                        and deployment.updated is not None
                        and deployment.updated >= updated_after
                    )
                    if fresh:
                        found[name] = str(deployment.id)
            if len(found) == len(names):
                return found
            if runner is not None and not runner.running():
                raise StackError(
                    f"the deployment runner exited with code {runner.process.returncode}; "
                    f"see {runner.log_path}: {_last_line(runner.log_tail())}"
                )
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(found))
                raise StackError(f"deployments not registered within {timeout:.0f} s: {missing}")
            time.sleep(1)


def _in_flight_filter() -> Any:
    """A flow-run filter for runs that hold a slot or a process (:data:`IN_FLIGHT_STATES`)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    return FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(IN_FLIGHT_STATES)))
    )


def in_flight_runs(deployment_names: list[str]) -> list[Any]:
    """Flow runs of these deployments that are pending, running or cancelling right now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    names = [name.split("/", 1)[-1] for name in deployment_names]
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=_in_flight_filter(),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)),
        )


def release_orphaned_runs(deployment_names: list[str], reason: str) -> dict[str, int]:
    """Crash runs a stopped runner left in flight and free their deployments' concurrency slots.

    Why: the OSS server keeps deployment concurrency leases in memory. A run still in flight when
    the stack stops keeps its slot after a server restart (the lease that would have expired is
    gone), so every later inbox run is cancelled (CANCEL_NEW) and retrainings wait forever
    (ENQUEUE). Only call this while no runner serves these deployments.

    Returns:
        ``{"crashed": runs marked Crashed, "released": slots freed}``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled, Crashed

    in_flight = _in_flight_filter()
    counts = {"crashed": 0, "cancelled": 0, "released": 0}
    with get_client(sync_client=True) as client:
        for name in deployment_names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            runs = client.read_flow_runs(
                flow_run_filter=in_flight,
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            )
            for run in runs:
                if run.state_type == StateType.PENDING:
                    # Claimed but never started: nothing ran, so nothing crashed.
                    state, key = Cancelled(message=reason), "cancelled"
                else:
                    state, key = Crashed(message=reason), "crashed"
                client.set_flow_run_state(run.id, state, force=True)
                counts[key] += 1
            limit = deployment.global_concurrency_limit
            if limit is not None and limit.active_slots:
                client.update_global_concurrency_limit(
                    limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )
                counts["released"] += limit.active_slots
    return counts


# --------------------------------------------------------------------------- Prefect: automations


def automations_dir() -> Path:
    """``deployments/automations`` of this checkout (or ``$LOOPML_AUTOMATIONS_DIR``)."""
    override = os.environ.get(AUTOMATIONS_DIR_VARIABLE)
    folder = (
        Path(override)
        if override
        else Path(__file__).resolve().parents[1] / "deployments" / "automations"
    )
    if not folder.is_dir():
        raise StackError(
            f"automation definitions not found in {folder}; set {AUTOMATIONS_DIR_VARIABLE}"
        )
    return folder


def render_automation_file(path: Path, values: dict[str, str]) -> list[dict[str, Any]]:
    """One automation file with its ``${LOOPML_...}`` placeholders filled in.

    The files are the same ones a person can feed to ``prefect automation create --from-file``
    after ``envsubst``; Prefect's own ``{{ event... }}`` templates pass through untouched.

    Raises:
        StackError: a placeholder has no value or the result is not an automation.
    """
    # Comments may mention shell variables ($PWD...): only the YAML itself is a template.
    body = "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    try:
        text = string.Template(body).substitute(values)
    except KeyError as exc:
        raise StackError(f"{path}: no value for placeholder ${{{exc.args[0]}}}") from None
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "automations" in data:
        data = data["automations"]
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(item, dict) and item.get("name") for item in items):
        raise StackError(f"{path}: every automation needs a mapping with a name")
    return items


def render_automations(
    folder: Path,
    configs: Iterable[ProjectConfig],
    *,
    project_dir: Path,
    retrain_deployment_ids: dict[str, str],
    notification_block_id: str | None,
) -> list[dict[str, Any]]:
    """Every automation definition, rendered: ``project-*.yaml`` once per project, the rest once.

    Files that need the notification block are left out when there is none.
    """
    definitions: list[dict[str, Any]] = []
    shared = {"LOOPML_PROJECT_DIR": str(project_dir.resolve())}
    if notification_block_id:
        shared["LOOPML_NOTIFICATION_BLOCK_ID"] = notification_block_id
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    for path in files:
        needs_block = "block_document_id" in path.read_text()
        if needs_block and not notification_block_id:
            continue
        if path.name.startswith(PROJECT_AUTOMATION_PREFIX):
            for config in configs:
                values = {
                    **shared,
                    "LOOPML_PROJECT": config.name,
                    "LOOPML_COOLDOWN_SECONDS": str(config.retraining.cooldown_seconds),
                    "LOOPML_RETRAIN_DEPLOYMENT_ID": retrain_deployment_ids[config.name],
                }
                definitions += render_automation_file(path, values)
        else:
            definitions += render_automation_file(path, shared)
    return definitions


def apply_automations(definitions: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Create or update each automation by name (idempotent: one automation per name).

    Returns ``[{"name", "id", "action": "created"|"updated"}]``.
    """
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    applied = []
    with get_client(sync_client=True) as client:
        for definition in definitions:
            desired = Automation(**AutomationCore.model_validate(definition).model_dump())
            existing = client.read_automations_by_name(desired.name)
            if existing:
                desired.id = existing[0].id
                desired.update()
                for duplicate in existing[1:]:  # left by an older, non-idempotent setup
                    client.delete_automation(duplicate.id)
                action = "updated"
            else:
                desired.create()
                action = "created"
            applied.append({"name": desired.name, "id": str(desired.id), "action": action})
    return applied


def existing_notification_block() -> str | None:
    """The id of the ``loopml-notifications`` block, if one was saved before."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(
                NOTIFICATION_BLOCK, block_type_slug="custom-webhook"
            )
        except ObjectNotFound:
            return None
    return str(document.id)


def apply_project_automations(
    project_dir: Path,
    configs: list[ProjectConfig],
    *,
    webhook_url: str | None = None,
    retrain_deployment_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Render deployments/automations/ for ``configs`` and create/update them by name.

    Args:
        project_dir: the folder the retrain runs use as ``project_dir``.
        configs: the projects.
        webhook_url: point the notification block here first; without it the existing block
            is used, and without one the notification automations are skipped.
        retrain_deployment_ids: project -> deployment id; default: read ``retrain/retrain-NAME``.

    Raises:
        StackError: a project has no retrain deployment on the server.
    """
    block_id = (
        save_notification_block(webhook_url) if webhook_url else existing_notification_block()
    )
    if retrain_deployment_ids is None:
        names = [f"retrain/{deployment_name('retrain', config.name)}" for config in configs]
        found = wait_for_deployments(names, timeout=0)
        retrain_deployment_ids = {
            config.name: found[name] for config, name in zip(configs, names, strict=True)
        }
    definitions = render_automations(
        automations_dir(),
        configs,
        project_dir=project_dir,
        retrain_deployment_ids=retrain_deployment_ids,
        notification_block_id=block_id,
    )
    return {"automations": apply_automations(definitions), "notification_block_id": block_id}


def save_notification_block(url: str) -> str:
    """The Custom Webhook block the notification automations send to; returns its id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="loopml",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        timeout=5,
    )
    return str(block.save(NOTIFICATION_BLOCK, overwrite=True))


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """A running ``loopml up``: its children, URLs and the record written to ``stack.json``."""

    settings: Settings
    project_dir: Path
    configs: list[ProjectConfig]
    ports: StackPorts
    progress: Callable[[str], None] = print
    children: list[ChildProcess] = field(default_factory=list)
    sink: NotificationSink | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.ports.prefect}/api"

    @property
    def runner_start_signal(self) -> Path:
        return self.log_dir / "runner.start"

    @property
    def deployment_names(self) -> list[str]:
        """``flow/deployment`` names of everything the runner serves."""
        return [
            f"{flow}/{deployment_name(flow, config.name)}"
            for config in self.configs
            for flow in FLOW_NAMES
        ]

    def start(self) -> dict[str, Any]:
        """Start every service, wait until each answers, and write ``stack.json``.

        Raises:
            StackError: a port is taken, another ``loopml up`` runs here, or a service failed
                (everything started so far is stopped again).
        """
        running = read_stack_file(self.settings.stack_file)
        if running is not None:
            raise StackError(
                f"loopml up is already running for {self.settings.home} (pid {running['pid']}, "
                f"Prefect UI {running.get('prefect_ui_url')})"
            )
        check_ports(self.ports)
        # A stack.json whose pid is gone was left by a killed 'loopml up': it must not point
        # later commands (or anyone waiting for it) at servers that do not exist.
        self.settings.stack_file.unlink(missing_ok=True)
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.settings.evidently_workspace.mkdir(parents=True, exist_ok=True)
        self.settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        for config in self.configs:
            (self.settings.inbox_dir / config.name).mkdir(parents=True, exist_ok=True)
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> dict[str, Any]:
        started = time.monotonic()
        server_env = child_environment(self.settings, None)
        server_env.update(
            {
                "PREFECT_SERVER_UI_ENABLED": "true",
                # The UI asks the browser to call this URL; without it, it says port 4200
                # whatever --port was given.
                "PREFECT_UI_API_URL": self.prefect_api_url,
                "PREFECT_SERVER_API_HOST": HOST,
                "PREFECT_SERVER_API_PORT": str(self.ports.prefect),
            }
        )
        prefect = self._launch(
            "prefect-server",
            "Prefect server",
            prefect_server_command(self.ports.prefect),
            server_env,
        )
        prefect.url = f"http://{HOST}:{self.ports.prefect}"
        mlflow_url = self.settings.mlflow_tracking_uri
        mlflow = None
        if embedded_mlflow(self.settings):
            mlflow = self._launch(
                "mlflow",
                "MLflow UI",
                mlflow_server_command(self.settings, self.ports.mlflow),
                child_environment(self.settings, None),
            )
            mlflow_url = mlflow.url = f"http://{HOST}:{self.ports.mlflow}"
        evidently = self._launch(
            "evidently",
            "Evidently UI",
            evidently_ui_command(self.settings, self.ports.evidently),
            child_environment(self.settings, None),
        )
        evidently.url = f"http://{HOST}:{self.ports.evidently}"
        # The runner imports the flows (slow) while the server starts; it serves on our signal.
        self.runner_start_signal.unlink(missing_ok=True)
        runner = self._launch(
            "runner",
            "deployment runner",
            runner_command(self.project_dir, [config.name for config in self.configs]),
            self._runner_environment(),
        )
        self.sink = NotificationSink(self.settings.home / "notifications.jsonl").start()

        self.progress("waiting for the Prefect server (15-20 s on a fresh home)...")
        self._wait(prefect, f"{self.prefect_api_url}/health", STARTUP_TIMEOUTS["prefect"])
        os.environ["PREFECT_API_URL"] = self.prefect_api_url
        with _prefect_api(self.prefect_api_url):
            recovered = release_orphaned_runs(
                self.deployment_names, "the runner stopped while this run was in flight"
            )
        if any(recovered.values()):
            self.progress(
                f"  recovered {recovered['crashed']} run(s) left in flight by the last stop"
            )
        runner_launched = datetime.now(UTC)
        self.runner_start_signal.touch()
        if mlflow is not None:
            self._wait(mlflow, f"{mlflow.url}/health", STARTUP_TIMEOUTS["mlflow"])
        self._wait(evidently, f"{evidently.url}/", STARTUP_TIMEOUTS["evidently"])

        with _prefect_api(self.prefect_api_url):
            self.progress("waiting for the runner to register the deployments...")
            names = self.deployment_names
            deployment_ids = wait_for_deployments(
                names, STARTUP_TIMEOUTS["runner"], runner, updated_after=runner_launched
            )
            self.progress(
                f"  runner: {len(names)} deployments served "
                f"({time.monotonic() - started:.1f} s since start)"
            )
            retrain_ids = {
                config.name: deployment_ids[f"retrain/{deployment_name('retrain', config.name)}"]
                for config in self.configs
            }
            automations = apply_project_automations(
                self.project_dir,
                self.configs,
                webhook_url=self.sink.url,
                retrain_deployment_ids=retrain_ids,
            )["automations"]
            self.progress(f"  automations: {len(automations)} applied")

        self.record = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "home": str(self.settings.home),
            "project_dir": str(self.project_dir),
            "projects": [config.name for config in self.configs],
            "prefect_ui_url": prefect.url,
            "prefect_api_url": self.prefect_api_url,
            "mlflow_url": mlflow_url,
            "evidently_url": evidently.url,
            "notifications_url": self.sink.url,
            "notifications_file": str(self.sink.path),
            "inbox_dir": str(self.settings.inbox_dir),
            "logs_dir": str(self.log_dir),
            "deployments": sorted(deployment_ids),
            "automations": [automation["name"] for automation in automations],
            "children": {child.name: child.process.pid for child in self.children},
            "startup_seconds": round(time.monotonic() - started, 1),
        }
        write_stack_file(self.settings.stack_file, self.record)
        return self.record

    def _runner_environment(self) -> dict[str, str]:
        env = child_environment(self.settings, self.prefect_api_url)
        env.update(
            {
                "PREFECT_RUNNER_POLL_FREQUENCY": str(RUNNER_POLL_SECONDS),
                # Served runs log at INFO so their steps show in the Prefect UI.
                "PREFECT_LOGGING_LEVEL": "INFO",
                AUTOMATIONS_DIR_VARIABLE: str(automations_dir()),
                RUNNER_START_SIGNAL_VARIABLE: str(self.runner_start_signal),
            }
        )
        return env

    def _launch(
        self, name: str, label: str, command: list[str], env: dict[str, str]
    ) -> ChildProcess:
        self.progress(f"starting {label}...")
        child = start_child(name, label, command, env, self.log_dir, cwd=self.settings.home)
        self.children.append(child)
        return child

    def _wait(self, child: ChildProcess, url: str, timeout: float) -> None:
        seconds = wait_for_http(url, timeout, child)
        self.progress(f"  {child.label}: ready in {seconds:.1f} s")

    def _release_after_runner(self) -> None:
        """With the runner gone and the server still up: no slot stays held by a dead run."""
        server = next((c for c in self.children if c.name == "prefect-server"), None)
        if server is None or not server.running():
            return
        try:
            with _prefect_api(self.prefect_api_url):
                recovered = release_orphaned_runs(
                    self.deployment_names, "loopml up stopped while this run was in flight"
                )
        except Exception as exc:  # noqa: BLE001 - stopping must go on; the next start retries
            self.progress(f"  could not release in-flight runs ({exc}); the next 'up' will")
            return
        if recovered["crashed"]:
            self.progress(f"  {recovered['crashed']} in-flight run(s) marked Crashed")
        if recovered["cancelled"]:
            self.progress(f"  {recovered['cancelled']} run(s) that had not started cancelled")

    def wait_for_runs(self, flows: list[str], timeout: float) -> int:
        """Wait until no run of these flows' deployments is in flight; returns how many still are.

        The demo calls it before stopping, so a retraining that has written its decision but is
        still logging is not cut short (and shown as Crashed).
        """
        names = [
            f"{flow}/{deployment_name(flow, config.name)}"
            for config in self.configs
            for flow in flows
        ]
        deadline = time.monotonic() + timeout
        with _prefect_api(self.prefect_api_url):
            while True:
                running = in_flight_runs(names)
                if not running or time.monotonic() > deadline:
                    return len(running)
                time.sleep(1)

    def failed_child(self) -> ChildProcess | None:
        """A child that exited while the stack was meant to be running."""
        return next((child for child in self.children if not child.running()), None)

    def stop(self) -> dict[str, int]:
        """Stop the runner first (it hangs if the server goes first), then the UIs, the server."""
        codes: dict[str, int] = {}
        order = {"runner": 0, "evidently": 1, "mlflow": 2, "prefect-server": 3}
        for child in sorted(self.children, key=lambda c: order.get(c.name, 0)):
            started = time.monotonic()
            codes[child.name] = stop_child(child, timeout=20)
            self.progress(f"  {child.label}: stopped in {time.monotonic() - started:.1f} s")
            if child.name == "runner":
                self._release_after_runner()
        if self.sink is not None:
            self.sink.stop()
            self.sink = None
        self.runner_start_signal.unlink(missing_ok=True)
        stack = read_stack_file(self.settings.stack_file)
        if stack is None or stack.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.settings.stack_file.unlink()
        self.children = []
        return codes


@contextlib.contextmanager
def _prefect_api(url: str):
    """Point this process's Prefect client at ``url``, whenever Prefect was first imported."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield


def run_until_stopped(stack: Stack, poll_seconds: float = 1.0) -> dict[str, Any]:
    """Block until SIGINT/SIGTERM (or a child dies), then stop everything in order.

    Raises:
        StackError: a service exited on its own (after the others were stopped).
    """
    stop_requested = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop_requested.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    crashed: ChildProcess | None = None
    try:
        while not stop_requested.wait(poll_seconds):
            crashed = stack.failed_child()
            if crashed is not None:
                break
    finally:
        stack.progress("stopping: runner, UIs, then the Prefect server...")
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(signum, signal.SIG_IGN)
        codes = stack.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if crashed is not None:
        raise StackError(
            f"{crashed.label} exited with code {crashed.process.returncode}; everything was "
            f"stopped; see {crashed.log_path}: {_last_line(crashed.log_tail())}"
        )
    return {
        **stack.record,
        "stopped": True,
        "signal": signal.Signals(received[0]).name if received else None,
        "exit_codes": codes,
    }
