"""The embedded stack behind ``loopml up``: servers, the deployment runner, automations.

One process (``loopml up``) owns everything and stops it in order on Ctrl-C or SIGTERM:

    Prefect server   this home's local server (``local_server``), reused if a command
                     started it; stopped with the stack only if the stack started it
    MLflow UI        mlflow server on the same store as the CLI (sqlite:///$LOOPML_HOME/mlflow.db)
    Evidently UI     evidently ui --workspace $LOOPML_HOME/evidently
    notification sink  a tiny HTTP receiver appending to $LOOPML_HOME/notifications.jsonl
    runner           ``loopml serve``: every project's deployments served with their schedules
    inbox watcher    a thread starting an inbox run when a file is ready, printing each outcome
    automations      rendered from deployments/automations/*.yaml, created by name

Process management here is plain Python. The few Prefect calls (deployments, blocks,
automations) import Prefect inside the functions that need it, so importing this module stays
free of Prefect and of side effects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.deployments import FLOW_NAMES, deployment_name
from loopml.claims import release_dead_claims
from loopml.cli.stack.deployments import (
    AUTOMATIONS_DIR_VARIABLE,
    RUNNER_START_SIGNAL_VARIABLE,
    apply_project_automations,
    automations_dir,
    in_flight_runs,
    prefect_api,
    release_orphaned_runs,
    wait_for_deployments,
)
from loopml.cli.stack.inbox_watch import InboxWatcher
from loopml.cli.stack.local_server import LocalServer, ensure_local_server, stop_local_server
from loopml.cli.stack.notifications import NotificationSink
from loopml.cli.stack.processes import (
    HOST,
    ChildProcess,
    StackPorts,
    check_ports,
    last_line,
    read_stack_file,
    start_child,
    stop_child,
    wait_for_http,
    write_stack_file,
)
from loopml.cli.stack.servers import (
    child_environment,
    embedded_mlflow,
    evidently_ui_command,
    evidently_ui_environment,
    mlflow_server_command,
    mlflow_server_environment,
    runner_command,
)
from loopml.config import ProjectConfig
from loopml.credentials import (
    CREDENTIALS_FILE,
    load_or_create_credentials,
    sqlite_creation_lock,
)
from loopml.errors import StackError
from loopml.settings import Settings, read_server_record

# How soon a triggered or scheduled run starts (LOOPML_RUNNER_POLL_SECONDS). Each poll is an
# API call the Prefect server answers: at 1 s the polls alone cost an idle stack ~1.2% of a core
# (benchmarks/idle_cpu_benchmark.py); at 5 s a run starts 2.5 s later on average.
RUNNER_POLL_SECONDS = 5
RUNNER_POLL_VARIABLE = "LOOPML_RUNNER_POLL_SECONDS"
WAIT_POLL_SECONDS = 0.25
STARTUP_TIMEOUTS = {"prefect": 120.0, "mlflow": 90.0, "evidently": 60.0, "runner": 120.0}


def runner_poll_seconds(environ: dict[str, str] | None = None) -> int:
    """``LOOPML_RUNNER_POLL_SECONDS`` (whole seconds, at least 1), else :data:`RUNNER_POLL_SECONDS`.

    Raises:
        StackError: the value is not a whole number of seconds >= 1.
    """
    raw = (os.environ if environ is None else environ).get(RUNNER_POLL_VARIABLE, "").strip()
    if not raw:
        return RUNNER_POLL_SECONDS
    if not raw.isdigit() or int(raw) < 1:
        raise StackError(
            f"{RUNNER_POLL_VARIABLE} must be a whole number of seconds >= 1, not {raw!r}"
        )
    return int(raw)


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
    server: LocalServer | None = None
    watcher: InboxWatcher | None = None
    # The runner's poll in seconds; None: LOOPML_RUNNER_POLL_SECONDS or the default (the demo
    # polls every second: a short run, not an idle stack).
    runner_poll: int | None = None
    # Held while the MLflow UI starts on a SQLite store: it creates (or migrates) the tables,
    # and a command opening the store at the same moment waits for it (see mlflow_client).
    store_creation: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def log_dir(self) -> Path:
        return self.settings.home / "logs"

    @property
    def prefect_api_url(self) -> str:
        if self.server is not None:
            return self.server.api_url
        running = read_server_record(self.settings.server_file)
        if running is not None:
            return running["api_url"]
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
        if read_server_record(self.settings.server_file) is None:
            check_ports(self.ports)
        else:  # the running local server is reused: its port is taken, by design
            check_ports(self.ports, skip=("prefect",))
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
        credentials = load_or_create_credentials(self.settings.home)
        self.settings = dataclasses.replace(
            self.settings,
            prefect_api_url=self.prefect_api_url,
            prefect_auth_string=credentials.prefect_auth_string,
        )
        mlflow_url = self.settings.mlflow_tracking_uri
        mlflow = None
        if embedded_mlflow(self.settings):
            for uri in sorted(
                {self.settings.mlflow_tracking_uri, self.settings.mlflow_registry_uri}
            ):
                self.store_creation.enter_context(sqlite_creation_lock(uri))
            mlflow = self._launch(
                "mlflow",
                "MLflow UI",
                mlflow_server_command(self.settings, self.ports.mlflow),
                mlflow_server_environment(self.settings, credentials),
            )
            mlflow_url = mlflow.url = f"http://{HOST}:{self.ports.mlflow}"
        evidently = self._launch(
            "evidently",
            "Evidently UI",
            evidently_ui_command(self.settings, self.ports.evidently),
            evidently_ui_environment(self.settings, credentials),
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
        self.sink = NotificationSink(
            self.settings.home / "notifications.jsonl", token=credentials.sink_token
        ).start()

        expected_url = self.prefect_api_url
        self.server = ensure_local_server(
            self.settings, port=self.ports.prefect, progress=self.progress
        )
        if self.server.started:
            self.progress(f"  Prefect server: ready in {self.server.startup_seconds:.1f} s")
        else:
            self.progress(f"  Prefect server: reusing the running one at {self.server.ui_url}")
        if self.server.api_url != expected_url:
            raise StackError(
                f"another command started the local Prefect server at {self.server.api_url} "
                "while loopml up was starting; run 'loopml up' again"
            )
        os.environ["PREFECT_API_URL"] = self.prefect_api_url
        os.environ["PREFECT_API_AUTH_STRING"] = credentials.prefect_auth_string
        with prefect_api(self.prefect_api_url):
            recovered = release_orphaned_runs(
                self.deployment_names, "the runner stopped while this run was in flight"
            )
        if any(recovered.values()):
            self.progress(
                f"  recovered {recovered['crashed']} run(s) left in flight by the last stop"
            )
        for config in self.configs:  # claims of retrainings killed with their runs (issue 12)
            released = release_dead_claims(
                self.settings.ledger_dir, self.settings.home / "locks", config.name
            )
            if released:
                self.progress(f"  {config.name}: released {len(released)} dead retraining claim(s)")
        runner_launched = datetime.now(UTC)
        self.runner_start_signal.touch()
        if mlflow is not None:
            self._wait(mlflow, f"{mlflow.url}/health", STARTUP_TIMEOUTS["mlflow"])
            self.store_creation.close()  # it answers: its tables are there
        self._wait(evidently, f"{evidently.url}/", STARTUP_TIMEOUTS["evidently"])

        with prefect_api(self.prefect_api_url):
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
                webhook_token=self.sink.token,
                retrain_deployment_ids=retrain_ids,
            )["automations"]
            self.progress(f"  automations: {len(automations)} applied")
        self.watcher = InboxWatcher(
            self.settings.inbox_dir,
            self.configs,
            start_run=self._start_inbox_run,
            # A run started but not yet picked up counts: a second one would find no file.
            in_flight=lambda deployment: bool(self._in_flight([deployment], scheduled=True)),
            progress=self.progress,
        ).start()

        self.record = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "home": str(self.settings.home),
            "project_dir": str(self.project_dir),
            "projects": [config.name for config in self.configs],
            "prefect_ui_url": self.server.ui_url,
            "prefect_auth_string_file": str(self.settings.home / CREDENTIALS_FILE),
            "prefect_server_started_here": self.server.started,
            "prefect_server_supervisor_pid": self.server.record["pid"],
            "prefect_api_url": self.prefect_api_url,
            "mlflow_url": mlflow_url,
            "evidently_url": evidently.url,
            "notifications_url": self.sink.url,
            "notifications_file": str(self.sink.path),
            "inbox_dir": str(self.settings.inbox_dir),
            "logs_dir": str(self.log_dir),
            "deployments": sorted(deployment_ids),
            "automations": [automation["name"] for automation in automations],
            "children": {
                "prefect-server": self.server.record["server_pid"],
                **{child.name: child.process.pid for child in self.children},
            },
            "startup_seconds": round(time.monotonic() - started, 1),
        }
        write_stack_file(self.settings.stack_file, self.record)
        return self.record

    def _runner_environment(self) -> dict[str, str]:
        env = child_environment(self.settings, self.prefect_api_url)
        env.update(
            {
                "PREFECT_RUNNER_POLL_FREQUENCY": str(self.runner_poll or runner_poll_seconds()),
                # Served runs log at INFO so their steps show in the Prefect UI.
                "PREFECT_LOGGING_LEVEL": "INFO",
                AUTOMATIONS_DIR_VARIABLE: str(automations_dir()),
                RUNNER_START_SIGNAL_VARIABLE: str(self.runner_start_signal),
            }
        )
        return env

    def _in_flight(self, deployment_names: list[str], scheduled: bool = False) -> list[Any]:
        with prefect_api(self.prefect_api_url):
            return in_flight_runs(deployment_names, scheduled=scheduled)

    def _start_inbox_run(self, deployment: str) -> None:
        """A run of ``inbox/inbox-NAME`` (its default parameters), not waited for."""
        from prefect.deployments import run_deployment

        with prefect_api(self.prefect_api_url):
            run_deployment(deployment, timeout=0)

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
        if self.server is None or read_server_record(self.settings.server_file) is None:
            return
        try:
            with prefect_api(self.prefect_api_url):
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
        with prefect_api(self.prefect_api_url):
            while True:
                running = in_flight_runs(names)
                if not running or time.monotonic() > deadline:
                    return len(running)
                time.sleep(WAIT_POLL_SECONDS)

    def failed_child(self) -> ChildProcess | None:
        """A child that exited while the stack was meant to be running."""
        return next((child for child in self.children if not child.running()), None)

    def stop(self) -> dict[str, int]:
        """Stop the runner first (it hangs if the server goes first), then the UIs, the server."""
        codes: dict[str, int] = {}
        self.store_creation.close()
        if self.watcher is not None:  # no new inbox run while the runner stops
            self.watcher.stop()
            self.watcher = None
        order = {"runner": 0, "evidently": 1, "mlflow": 2}
        for child in sorted(self.children, key=lambda c: order.get(c.name, 0)):
            started = time.monotonic()
            codes[child.name] = stop_child(child, timeout=20)
            self.progress(f"  {child.label}: stopped in {time.monotonic() - started:.1f} s")
            if child.name == "runner":
                self._release_after_runner()
        if self.server is not None and self.server.started:
            started = time.monotonic()
            stop_local_server(self.settings)
            self.progress(f"  Prefect server: stopped in {time.monotonic() - started:.1f} s")
        elif self.server is not None:
            self.progress("  Prefect server: left running for later commands ('loopml down')")
        self.server = None
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
            f"stopped; see {crashed.log_path}: {last_line(crashed.log_tail())}"
        )
    return {
        **stack.record,
        "stopped": True,
        "signal": signal.Signals(received[0]).name if received else None,
        "exit_codes": codes,
    }
