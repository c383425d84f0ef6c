"""Child processes of ``loopml up``: ports, start/stop in their own group, the stack file."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopml.errors import StackError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class StackPorts:
    """Loopback ports of the three UIs."""

    prefect: int = 4200
    mlflow: int = 5000
    evidently: int = 8000

    def as_dict(self) -> dict[str, int]:
        return {"prefect": self.prefect, "mlflow": self.mlflow, "evidently": self.evidently}


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


def check_ports(ports: StackPorts, skip: tuple[str, ...] = ()) -> None:
    """Raise one clear error naming every requested port that is taken (``skip``: not those).

    Raises:
        StackError: a port is in use, listed twice, or not a port number (0 is not "any free
            port" here: the UIs' addresses are known before they start).
    """
    requested = ports.as_dict()
    options = " / ".join(f"--{name}-port" for name in requested)
    invalid = [f"{port} ({name})" for name, port in requested.items() if not 0 < port < 65536]
    if invalid:
        raise StackError(
            f"port {', '.join(invalid)} is not a port number from 1 to 65535; "
            f"pick other ports with {options}"
        )
    if len(set(requested.values())) != len(requested):
        raise StackError(f"the ports must differ: {requested}")
    busy = [
        f"{port} ({name})"
        for name, port in requested.items()
        if name not in skip and not port_is_free(port)
    ]
    if busy:
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


def stop_stack(stack_file: Path, timeout: float = 180.0) -> int | None:
    """SIGTERM a running ``loopml up`` (it stops its children in order) and wait for it.

    Returns:
        Its pid, or ``None`` when none was running.

    Raises:
        StackError: it did not stop within ``timeout``.
    """
    stack = read_stack_file(stack_file)
    if stack is None:
        return None
    pid = int(stack["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_stack_file(stack_file) is not None:
        if time.monotonic() > deadline:
            raise StackError(f"loopml up (pid {pid}) did not stop within {timeout:.0f} s")
        time.sleep(0.5)
    return pid


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
                f"see {child.log_path}: {last_line(child.log_tail())}"
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


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
