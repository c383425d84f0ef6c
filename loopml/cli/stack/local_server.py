"""One local Prefect server per LOOPML_HOME, started by the first command that needs the API.

Why: Prefect's ephemeral server costs 10-20 s per command. The first ``loopml`` command that
runs a flow (or ``loopml up``) starts ``prefect server start`` in the background under a small
supervisor (``server_watchdog.py``) on 127.0.0.1, SQLite under ``$LOOPML_HOME/prefect``; its
URL and pids go to ``$LOOPML_HOME/server.json`` (0600), its secret to ``credentials.json``.
Every later command reuses it; ``loopml down`` stops it, and so does its supervisor after
``LOOPML_SERVER_IDLE_MINUTES`` (default 30) without use. A file lock makes concurrent first
commands start one server. ``PREFECT_API_URL`` set by the user wins: no local server then.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopml.cli.stack.processes import HOST, last_line, port_is_free
from loopml.cli.stack.server_watchdog import WATCHDOG_VARIABLE, process_alive
from loopml.cli.stack.servers import prefect_server_command, prefect_server_environment
from loopml.credentials import file_lock, load_or_create_credentials
from loopml.errors import StackError
from loopml.settings import Settings, read_server_record

DEFAULT_PORT = 4200
PORT_VARIABLE = "LOOPML_SERVER_PORT"
IDLE_VARIABLE = "LOOPML_SERVER_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
STARTUP_TIMEOUT = 180.0


@dataclass(frozen=True)
class LocalServer:
    """A running local server: its record and whether this process started it."""

    record: dict[str, Any]
    started: bool
    startup_seconds: float = 0.0

    @property
    def api_url(self) -> str:
        return self.record["api_url"]

    @property
    def ui_url(self) -> str:
        return self.record["ui_url"]


def used_file(settings: Settings) -> Path:
    """Touched by every command that uses the server; its age is the idle time."""
    return settings.home / "server.used"


def lock_path(settings: Settings) -> Path:
    """Held by a command while it looks for (or starts) the server, and by the supervisor
    while it decides the server is idle and withdraws its record: a command that found the
    record has touched the last-used file before the supervisor looks again."""
    return settings.home / "server.lock"


def log_path(settings: Settings) -> Path:
    return settings.home / "logs" / "prefect-server.log"


def idle_seconds(environ: dict[str, str] | None = None) -> float:
    """``LOOPML_SERVER_IDLE_MINUTES`` in seconds (0 or less: never stop for idleness).

    Raises:
        StackError: the value is not a number.
    """
    raw = (os.environ if environ is None else environ).get(IDLE_VARIABLE, "")
    try:
        minutes = float(raw) if raw.strip() else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise StackError(f"{IDLE_VARIABLE} must be a number of minutes, not {raw!r}") from None
    return minutes * 60 if minutes > 0 else float("inf")


def _choose_port(requested: int | None) -> int:
    """``requested``, else ``LOOPML_SERVER_PORT``, else 4200 when free, else any free port
    (``0`` asks for any free port).

    Raises:
        StackError: the requested or configured port is taken, or not a number.
    """
    configured = requested if requested is not None else os.environ.get(PORT_VARIABLE, "")
    try:
        port = int(configured) if str(configured).strip() else None
    except ValueError:
        raise StackError(f"{PORT_VARIABLE} must be a port number, not {configured!r}") from None
    if port is not None and port != 0:
        if not port_is_free(port):
            raise StackError(
                f"port {port} (prefect) already in use on {HOST}; stop what holds it or pick "
                f"another port with --prefect-port or {PORT_VARIABLE}"
            )
        return port
    if port is None and port_is_free(DEFAULT_PORT):
        return DEFAULT_PORT
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def ensure_local_server(
    settings: Settings,
    port: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> LocalServer:
    """The running local server of ``settings.home``, started (and recovered) if none runs.

    Holds ``server.lock`` while it looks and starts: a concurrent first command waits and
    then reuses the server this one started.

    Raises:
        StackError: the port is taken, or the server did not answer in time.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(settings)):
        record = read_server_record(settings.server_file)
        if record is not None:
            used_file(settings).touch()
            return LocalServer(record=record, started=False)
        started = time.monotonic()
        chosen = _choose_port(port)
        if progress is not None:
            progress(f"starting the local Prefect server on port {chosen} (once per home)...")
        supervisor = _spawn(settings, chosen)
        record = _wait_for_record(settings, supervisor, STARTUP_TIMEOUT)
        server = LocalServer(
            record=record, started=True, startup_seconds=time.monotonic() - started
        )
        # Still under the lock: no other command has used this server yet, so any run still
        # in flight in its database was left by a process that lost its server.
        crashed = recover_stale_runs(server, settings)
        if crashed and progress is not None:
            progress(f"  marked {crashed} run(s) left in flight by a stopped server as Crashed")
        return server


def _spawn(settings: Settings, port: int) -> subprocess.Popen:
    credentials = load_or_create_credentials(settings.home)
    env = prefect_server_environment(settings, port, credentials)
    api_url = f"http://{HOST}:{port}/api"
    env[WATCHDOG_VARIABLE] = json.dumps(
        {
            "command": prefect_server_command(port),
            "api_url": api_url,
            "ui_url": f"http://{HOST}:{port}",
            "port": port,
            "home": str(settings.home),
            "server_file": str(settings.server_file),
            "used_file": str(used_file(settings)),
            "lock_file": str(lock_path(settings)),
            "stack_file": str(settings.stack_file),
            "auth_string": credentials.prefect_auth_string,
            "idle_seconds": idle_seconds(),
            "check_seconds": min(60.0, max(1.0, idle_seconds() / 4)),
            "startup_timeout": STARTUP_TIMEOUT,
        }
    )
    log = log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("server_watchdog.py")
    with open(log, "ab") as handle:
        # A new session: the server outlives this command and no terminal signal reaches it.
        return subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_record(
    settings: Settings, supervisor: subprocess.Popen, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_server_record(settings.server_file)
        if record is not None and record.get("pid") == supervisor.pid:
            return record
        if supervisor.poll() is not None:
            tail = log_path(settings).read_text(errors="replace")[-1500:]
            raise StackError(
                f"the local Prefect server did not start (see {log_path(settings)}): "
                f"{last_line(tail)}"
            )
        time.sleep(0.2)
    supervisor.terminate()
    raise StackError(
        f"the local Prefect server did not answer within {timeout:.0f} s; see {log_path(settings)}"
    )


def recover_stale_runs(server: LocalServer, settings: Settings) -> int:
    """Mark runs left in flight when the server last stopped as Crashed; returns how many."""
    from loopml.cli.stack.deployments import crash_runs, prefect_api

    with prefect_api(server.api_url, settings.prefect_auth_string or _auth(settings)):
        counts = crash_runs(None, "its process lost the Prefect server before the run ended")
    return counts["crashed"] + counts["cancelled"]


def _auth(settings: Settings) -> str:
    return load_or_create_credentials(settings.home).prefect_auth_string


def stop_local_server(settings: Settings, timeout: float = 40.0) -> dict[str, Any] | None:
    """Stop this home's local server (its supervisor stops the server); returns its record.

    Returns ``None`` when none was running.
    """
    from loopml.cli import warm

    warm.stop(settings.home)  # it serves commands on this server only
    record = read_server_record(settings.server_file)
    if record is None:
        return None
    pid = int(record["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return record
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        with contextlib.suppress(ChildProcessError):  # reap it if we started it (no zombie)
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    settings.server_file.unlink(missing_ok=True)
    return record
