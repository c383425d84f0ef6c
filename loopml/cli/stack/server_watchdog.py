"""The local Prefect server's supervisor: starts it, records it, stops it when idle or asked.

Run as a script (``python server_watchdog.py``), not as ``-m loopml.cli...``: importing the
``loopml.cli`` package would load the whole CLI (MLflow, pandas) into a process that lives for
hours and needs only the standard library. Its settings come in the ``LOOPML_WATCHDOG``
environment variable (JSON), written by ``loopml.cli.stack.local_server``; secrets stay out of
the command line (``ps`` shows it to every user).

Idle means: nothing touched the last-used file for ``idle_seconds``, no flow run that started
in the last 6 hours is running or cancelling on the server, and no ``loopml up`` of this home is
alive. It also stops when its ``server.json`` is gone (the home was deleted).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

WATCHDOG_VARIABLE = "LOOPML_WATCHDOG"
IN_FLIGHT = ["PENDING", "RUNNING", "CANCELLING"]
BUSY_RUN_HOURS = 6


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _request(url: str, auth_string: str, body: dict[str, Any] | None = None) -> Any:
    headers = {
        "Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode(),
        "Content-Type": "application/json",
    }
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _runs_in_flight(api_url: str, auth_string: str) -> int:
    """Runs in flight that started in the last ``BUSY_RUN_HOURS``: a run its killed process
    left "Running" must not keep the server up for ever."""
    since = datetime.now(UTC) - timedelta(hours=BUSY_RUN_HOURS)
    body = {
        "flow_runs": {
            "state": {"type": {"any_": IN_FLIGHT}},
            "start_time": {"after_": since.isoformat()},
        }
    }
    try:
        return int(_request(f"{api_url}/flow_runs/count", auth_string, body))
    except (OSError, ValueError, TypeError):
        return 0  # an API that does not answer is no reason to keep it running


def _up_alive(stack_file: Path) -> bool:
    try:
        return process_alive(int(json.loads(stack_file.read_text())["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_private(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    scratch.replace(path)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's group, SIGKILL what is left (after 20 s, or at once once it exited:
    grandchildren that outlived it)."""
    _signal_group(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(20)
    _signal_group(server.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(5)


def _still_ours(server_file: Path) -> bool:
    try:
        return json.loads(server_file.read_text()).get("pid") == os.getpid()
    except (OSError, ValueError):
        return False


def idle(config: dict[str, Any], now: float) -> bool:
    """Whether the server has had nothing to do for ``idle_seconds``."""
    try:
        last_used = Path(config["used_file"]).stat().st_mtime
    except OSError:
        last_used = 0.0
    if now - last_used < config["idle_seconds"]:
        return False
    if _up_alive(Path(config["stack_file"])):
        return False
    return _runs_in_flight(config["api_url"], config["auth_string"]) == 0


def retire_if_idle(config: dict[str, Any], stop_server: Callable[[], None]) -> bool:
    """Withdraw the server's record and stop the server if it is idle; whether it did.

    Done under the home's server lock, which a command holds while it reads the record and
    touches the last-used file (or starts a server): without it, a command could read the
    record just before the server stopped and meet a dead port, or start a server on the port
    the old one still holds. Idleness is checked again once the lock is held.
    """
    if not idle(config, time.time()):
        return False
    # loopml.credentials.file_lock's flock, by hand: this script imports nothing of loopml.
    with open(config["lock_file"], "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not idle(config, time.time()):
                return False
            _forget_record(Path(config["server_file"]))
            stop_server()
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _forget_record(server_file: Path) -> None:
    """Remove ``server_file`` if it is this supervisor's record."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(server_file.read_text()).get("pid") == os.getpid():
            server_file.unlink()


def supervise(config: dict[str, Any]) -> int:
    """Start the server, write its record, watch it; returns the exit code."""
    server_file = Path(config["server_file"])
    stop = threading.Event()
    reason: list[str] = []

    def request_stop(signum: int, _frame: Any) -> None:
        reason.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    # Its own process group: stopping it reaches the uvicorn and service processes it starts.
    server = subprocess.Popen(config["command"], stdin=subprocess.DEVNULL, start_new_session=True)
    code = 0
    try:
        deadline = time.monotonic() + config["startup_timeout"]
        while not _healthy(config["api_url"]):
            if server.poll() is not None or stop.is_set() or time.monotonic() > deadline:
                print(f"loopml: the Prefect server did not start (code {server.poll()})")
                return 1
            time.sleep(0.3)
        record = {
            "pid": os.getpid(),
            "server_pid": server.pid,
            "api_url": config["api_url"],
            "ui_url": config["ui_url"],
            "port": config["port"],
            "home": config["home"],
            "idle_minutes": config["idle_seconds"] / 60,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_private(server_file, json.dumps(record, indent=2))
        Path(config["used_file"]).touch()
        print(f"loopml: Prefect server {config['api_url']} up (pid {server.pid})", flush=True)
        while not stop.wait(config["check_seconds"]):
            if server.poll() is not None:
                print(f"loopml: the Prefect server exited with code {server.returncode}")
                code = 1
                break
            if not _still_ours(server_file):
                reason.append("its record was removed (home deleted?)")
                break
            if retire_if_idle(config, lambda: _stop_group(server)):
                reason.append(f"idle for {config['idle_seconds'] / 60:g} min")
                break
    finally:
        _forget_record(server_file)
        _stop_group(server)
        print(f"loopml: Prefect server stopped ({', '.join(reason) or 'exited'})", flush=True)
    return code


def main() -> int:
    config = json.loads(os.environ.pop(WATCHDOG_VARIABLE))
    return supervise(config)


if __name__ == "__main__":
    sys.exit(main())
