"""The warm process: one per LOOPML_HOME, running commands with every library already loaded.

Why: a command's own work is often a second or two (score 200 rows, monitor 500), but a fresh
Python process spends 4-8 s importing Prefect, MLflow, scikit-learn, Great Expectations and
Evidently, and then loading the champion. Measured on 2 cores: ``loopml monitor`` of 500 rows
took 18 s in a fresh process.

How: the first command that runs a flow on this home's local Prefect server starts
``python -m loopml.cli.warm`` in the background once it is done (``LOOPML_WARM=0``: never). That
process imports the CLI, the flows and the libraries, listens on 127.0.0.1 and writes
``$LOOPML_HOME/warm.json`` (0600: its port and a secret). A later ``loopml`` command of
:data:`FORWARDED` sends it the arguments, the working directory and the display variables; the
warm process runs the same Typer command in its main thread, its stdout and stderr relayed line
by line, and answers with the exit code. Flow runs are recorded in the same Prefect API as
before, with the same names and tags; the champion and the reference stay loaded between
commands (cached by version, see ``tasks.scoring``).

The client runs the command itself, as before, whenever the warm process cannot take it: none
runs, it is busy with another command, its environment differs (another ``PREFECT_API_URL``,
``MLFLOW_*``, ``LOOPML_*`` or Python, or loopml's code changed since it started), or it does not
answer at once. Ctrl-C in the client interrupts the command in the warm process.

It exits when this home's local server stops (``loopml down`` stops both), after
``LOOPML_SERVER_IDLE_MINUTES`` without a command, or once its memory passes
``LOOPML_WARM_MAX_MB`` (default 2048; the next command starts a fresh one).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

FORWARDED = frozenset(
    {
        "validate",
        "train",
        "score",
        "monitor",
        "label",
        "retrain",
        "promote",
        "rollback",
        "explain",
        "slices",
    }
)
ENABLED_VARIABLE = "LOOPML_WARM"
MAX_MB_VARIABLE = "LOOPML_WARM_MAX_MB"
DEFAULT_MAX_MB = 2048
# Read per command, so they travel with the request instead of being part of the fingerprint.
PER_COMMAND = ("LOOPML_PROGRESS", "LOOPML_DEBUG", "COLUMNS", "LINES", "NO_COLOR", "TERM")
FINGERPRINT_PREFIXES = (
    "LOOPML_",
    "PREFECT_",
    "MLFLOW_",
    "GX_",
    "OMP_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "PYTHON",
    "VIRTUAL_ENV",
    "PATH",
    "HOME",
    "TZ",
)
HANDSHAKE_SECONDS = 0.5
CHECK_SECONDS = 1.0
GC_THRESHOLDS = (100_000, 50, 1000)  # Python's defaults: (700, 10, 10)
CODE_PACKAGES = ("loopml", "flows", "tasks")

# The environment the command line started with, before settings were applied to it.
ORIGINAL_ENVIRON: dict[str, str] = dict(os.environ)
# Set by ``try_forward`` for a command the warm process could run: only such a command, run
# from the command line, starts one (not ``loopml demo``, ``up``, or a flow called in Python).
_CLI_COMMAND: list[str] = []


def remember_environment() -> None:
    """Called first by ``main``: the environment before any command changed it."""
    ORIGINAL_ENVIRON.clear()
    ORIGINAL_ENVIRON.update(os.environ)


def enabled(environ: dict[str, str]) -> bool:
    return environ.get(ENABLED_VARIABLE, "1").strip().lower() not in {"0", "false", "no", "off"}


def record_path(home: Path) -> Path:
    return home / "warm.json"


def log_path(home: Path) -> Path:
    return home / "logs" / "warm.log"


def home_of(environ: dict[str, str]) -> Path:
    """This command's LOOPML_HOME, resolved (the default ``.loopml`` depends on the cwd)."""
    from loopml.settings import load_settings

    return load_settings(environ).home


def _code_stamp() -> str:
    """The newest modification time of loopml's own modules: edited code means a new process."""
    root = Path(__file__).resolve().parents[2]
    newest = 0
    for package in CODE_PACKAGES:
        for path in (root / package).rglob("*.py"):
            with contextlib.suppress(OSError):
                newest = max(newest, path.stat().st_mtime_ns)
    return str(newest)


def fingerprint(environ: dict[str, str]) -> str:
    """What must be equal for a command to run in the warm process rather than its own."""
    relevant = {
        key: value
        for key, value in environ.items()
        if key.startswith(FINGERPRINT_PREFIXES) and key not in PER_COMMAND
    }
    relevant["LOOPML_HOME"] = str(home_of(environ))
    material = json.dumps(
        {"env": relevant, "python": sys.executable, "code": _code_stamp()}, sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _read_record(home: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(record_path(home).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: int) -> bool:
    from loopml.cli.stack.server_watchdog import process_alive

    return process_alive(pid)


# --- the client side -------------------------------------------------------------------------


class Unavailable(Exception):
    """The warm process cannot take this command: the client runs it itself."""


def try_forward(argv: list[str]) -> int | None:
    """Run ``argv`` in the warm process; its exit code, or ``None`` to run it here instead."""
    if not argv or argv[0] not in FORWARDED or not enabled(ORIGINAL_ENVIRON):
        return None
    if "--help" in argv or "-h" in argv:
        return None
    _CLI_COMMAND[:] = argv[:1]
    try:
        home = home_of(ORIGINAL_ENVIRON)
        record = _read_record(home)
        if record is None or record.get("fingerprint") != fingerprint(ORIGINAL_ENVIRON):
            return None
        connection = _handshake(record)
    except Exception:  # noqa: BLE001 - nothing was sent: the command runs here, as without it
        return None
    return _relay(connection, argv, record, home)


def _handshake(record: dict[str, Any]) -> socket.socket:
    connection = socket.create_connection(
        ("127.0.0.1", int(record["port"])), timeout=HANDSHAKE_SECONDS
    )
    try:
        reader = connection.makefile("rb")
        answer = json.loads(reader.readline() or b"null")
        if not isinstance(answer, dict) or answer.get("state") != "ready":
            raise Unavailable(str(answer))
    except (OSError, ValueError, Unavailable):
        connection.close()
        raise Unavailable("no answer") from None
    return connection


def _relay(connection: socket.socket, argv: list[str], record: dict[str, Any], home: Path) -> int:
    """Send the command (with the secret of the record it connected by), print what it writes,
    return its exit code."""
    request = {
        "token": record.get("token"),
        "argv": argv,
        "cwd": os.getcwd(),
        "env": {key: ORIGINAL_ENVIRON[key] for key in PER_COMMAND if key in ORIGINAL_ENVIRON},
        "tty": {"stdout": _isatty(sys.stdout), "stderr": _isatty(sys.stderr)},
    }
    connection.settimeout(None)
    with connection, connection.makefile("rb") as reader:
        connection.sendall(json.dumps(request).encode() + b"\n")
        try:
            for line in reader:
                message = json.loads(line)
                if "exit" in message:
                    return int(message["exit"])
                stream = sys.stdout if message.get("stream") == "out" else sys.stderr
                stream.write(message.get("text", ""))
                stream.flush()
        except KeyboardInterrupt:  # closing the connection interrupts the command there
            sys.stderr.write("loopml: error: interrupted\n")
            return 130
    log = log_path(home)
    sys.stderr.write(f"loopml: error: the warm process ended before the command did (see {log})\n")
    return 1


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def start_in_background(home: Path, project: str | None = None) -> None:
    """Start this home's warm process unless one runs (or is starting) or it is turned off.

    One that runs for another environment or older code is replaced: the home's later
    commands are most likely this one's. ``project`` (the command's): the new process loads
    its champion before it takes commands, so the next ``score`` or ``monitor`` finds it loaded.
    """
    if not _CLI_COMMAND or not enabled(ORIGINAL_ENVIRON):
        return
    record = _read_record(home)
    if record is not None and _alive(int(record.get("pid", 0))):
        if record.get("fingerprint") == fingerprint(ORIGINAL_ENVIRON):
            return
        stop(home)
    if not _claim_start(home / "warm.starting"):
        return  # another command is starting one
    log = log_path(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        subprocess.Popen(
            # Not ``-m loopml.cli.warm``: the package imports this module, and runpy would then
            # run a second copy of it as __main__.
            [
                sys.executable,
                "-c",
                "import sys; from loopml.cli.warm import main; sys.exit(main())",
                *([project] if project else []),
            ],
            env={**ORIGINAL_ENVIRON, "LOOPML_HOME": str(home)},
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; no terminal signal reaches it
        )


def _claim_start(marker: Path, stale_seconds: float = 120.0) -> bool:
    """Create ``marker`` atomically; one left by a start that failed long ago is taken over."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if time.time() - marker.stat().st_mtime < stale_seconds:
                    return False
                marker.unlink()
            except FileNotFoundError:
                continue
    return False


def stop(home: Path, timeout: float = 20.0) -> bool:
    """Stop this home's warm process (``loopml down``); whether one was running."""
    record = _read_record(home)
    if record is None:
        return False
    pid = int(record.get("pid", 0))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    record_path(home).unlink(missing_ok=True)
    return True


# --- the warm process ------------------------------------------------------------------------


class RelayStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a command in the warm process: each write goes to the
    client as one JSON line (from any thread: task runners log from their own)."""

    def __init__(self, connection: socket.socket, name: str, tty: bool, lock: threading.Lock):
        self._connection, self._name, self._tty, self._lock = connection, name, tty, lock
        self.closed_by_client = False

    @property
    def encoding(self) -> str:
        return "utf-8"

    @property
    def errors(self) -> str:
        return "strict"

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # how click tells a text stream from a binary one
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text and not self.closed_by_client:
            _send(self._connection, {"stream": self._name, "text": text}, self._lock)
        return len(text)


def _send(connection: socket.socket, message: dict[str, Any], lock: threading.Lock) -> None:
    with lock, contextlib.suppress(OSError):
        connection.sendall(json.dumps(message).encode() + b"\n")


class WarmProcess:
    """Listens, hands one command at a time to the main thread, answers "busy" meanwhile."""

    def __init__(self, home: Path, server_pid: int) -> None:
        self.home, self.server_pid = home, server_pid
        self.token = secrets.token_urlsafe(24)
        self.busy = threading.Lock()
        self.requests: queue.Queue[socket.socket] = queue.Queue()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.last_used = time.monotonic()
        self.commands = 0
        self.running = False  # a command runs in the main thread (Ctrl-C may interrupt it)
        self.stopping = False  # SIGTERM: stop once the running command is done

    def on_signal(self, signum: int, _frame: Any) -> None:
        """SIGINT is what a client's Ctrl-C sends (:func:`_interrupt_when_closed`): it
        interrupts the running command only. SIGTERM stops the process after it."""
        if signum == signal.SIGINT:
            if self.running:
                raise KeyboardInterrupt
            return
        self.stopping = True

    def accept_forever(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.busy.acquire(blocking=False):
                # "ready" from here: the main thread may still be collecting the last
                # command's garbage, and the client waits for this line half a second only.
                _send(connection, {"state": "ready"}, threading.Lock())
                self.requests.put(connection)
            else:
                _send(connection, {"state": "busy"}, threading.Lock())
                connection.close()

    def run(self, idle_seconds: float, max_mb: float) -> str:
        """Serve until the server stops, idleness or memory; returns why it stopped."""
        threading.Thread(target=self.accept_forever, daemon=True, name="warm-accept").start()
        while True:
            try:
                connection = self.requests.get(timeout=CHECK_SECONDS)
            except queue.Empty:
                if self.stopping:
                    return "asked to stop"
                if not self._server_running():
                    return "the local Prefect server stopped"
                if time.monotonic() - self.last_used > idle_seconds:
                    return f"idle for {idle_seconds / 60:g} min"
                continue
            try:
                self.serve(connection)
            finally:
                self.busy.release()
                # The collector's full passes over a heap this size cost ~1.3 s a monitor
                # command (measured): they run here, after the client has its answer.
                gc.collect()
                _release_memory()
                self.last_used = time.monotonic()
            if self.stopping:
                return "asked to stop"
            if _resident_mb() > max_mb:
                return f"memory above {max_mb:g} MB"

    def _server_running(self) -> bool:
        from loopml.settings import read_server_record

        server = read_server_record(self.home / "server.json")
        return server is not None and int(server.get("pid", 0)) == self.server_pid

    def serve(self, connection: socket.socket) -> None:
        lock = threading.Lock()
        with connection:
            connection.settimeout(HANDSHAKE_SECONDS * 4)
            try:
                with connection.makefile("rb") as reader:
                    request = json.loads(reader.readline() or b"null")
            except (OSError, ValueError):
                return  # the client gave up before sending: it runs the command itself
            if not isinstance(request, dict) or request.get("token") != self.token:
                return
            connection.settimeout(None)
            self.commands += 1
            started = time.monotonic()
            code = self.execute(connection, request, lock)
            print(
                f"loopml warm: {' '.join(request['argv'][:2])} -> exit {code} "
                f"in {time.monotonic() - started:.2f} s",
                flush=True,
            )
            _send(connection, {"exit": code}, lock)

    def execute(self, connection: socket.socket, request: dict[str, Any], lock: threading.Lock):
        """Run the command as ``loopml`` would, with this process's stdout/stderr relayed."""
        from loopml.cli.app import app

        saved_environ, saved_cwd = dict(os.environ), os.getcwd()
        saved_streams = sys.stdout, sys.stderr
        tty = request.get("tty", {})
        out = RelayStream(connection, "out", bool(tty.get("stdout")), lock)
        err = RelayStream(connection, "err", bool(tty.get("stderr")), lock)
        watcher = threading.Thread(
            target=_interrupt_when_closed, args=(connection, out, err), daemon=True
        )
        code: int = 0
        try:
            os.environ.clear()
            os.environ.update(ORIGINAL_ENVIRON)
            os.environ.update(request.get("env", {}))
            os.chdir(request["cwd"])
            sys.stdout, sys.stderr = out, err
            watcher.start()
            self.running = True
            try:
                app(args=list(request["argv"]), prog_name="loopml")
            finally:
                self.running = False
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BaseException as exc:  # noqa: BLE001 - the client gets a line, the log the rest
            err.write(f"loopml: error: {type(exc).__name__}: {exc}\n")
            traceback.print_exc(file=saved_streams[1])
            code = 1
        finally:
            sys.stdout, sys.stderr = saved_streams
            os.environ.clear()
            os.environ.update(saved_environ)
            with contextlib.suppress(OSError):
                os.chdir(saved_cwd)
            _forget_command_state()
        return code


def _interrupt_when_closed(connection: socket.socket, *streams: RelayStream) -> None:
    """Ctrl-C in the client closes its end: interrupt the command here as Ctrl-C would."""
    import _thread

    try:
        closed = connection.recv(1) == b""
    except OSError:
        closed = True
    if closed:
        for stream in streams:
            stream.closed_by_client = True
        _thread.interrupt_main()


def _forget_command_state() -> None:
    """What a command leaves behind that the next must not inherit: its progress handler
    (bound to the last client's stderr) and an MLflow run left active by an error."""
    import logging

    from loopml.cli.progress import RUN_LOGGERS, ProgressHandler

    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, ProgressHandler):
                logger.removeHandler(handler)
    with contextlib.suppress(Exception):
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("FAILED")


def preload_champion(settings: Any, project: str) -> str:
    """Load ``project``'s champion into the process's cache of checked models (the check runs
    again at every use); the line it writes to the log. A failure only costs the first command
    the load it would have done anyway."""
    from loopml.registry import CHAMPION, load_version, mlflow_client, version_by_alias

    started = time.monotonic()
    try:
        client = mlflow_client(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
        champion = version_by_alias(client, project, CHAMPION)
        if champion is None:
            line = f"loopml warm: {project} has no champion to load yet"
        else:
            load_version(client, champion)
            line = (
                f"loopml warm: {project} v{champion.version} (champion) loaded in "
                f"{time.monotonic() - started:.1f} s"
            )
    except Exception as exc:  # noqa: BLE001 - the command that needs it will say what is wrong
        line = f"loopml warm: {project}'s champion not loaded ({' '.join(str(exc).split())[:200]})"
    print(line, flush=True)
    return line


def _release_memory() -> None:
    """What the command freed goes back to the system, so the next one starts from the process's
    own size: pyarrow's pool (see release_read_buffers) and the C heap's free pages (glibc
    keeps them otherwise; pandas and numpy allocate there)."""
    if "pyarrow" in sys.modules:
        from loopml.data import release_read_buffers

        release_read_buffers()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _resident_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _warm_up() -> None:
    """Import what commands use, so the first forwarded command does not pay for it."""
    import evidently  # noqa: F401
    import fairlearn.metrics  # noqa: F401 - the training's fairness audit
    import git  # noqa: F401 - MLflow's run tags (the source's commit)
    import graphviz  # noqa: F401 - Prefect, at a process's first flow call
    import great_expectations  # noqa: F401
    import matplotlib.backends.backend_agg  # noqa: F401 - every figure
    import mlflow.sklearn  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - the embedded default store
    import pyarrow.dataset  # noqa: F401 - a process's first Parquet read (~0.25 s)
    import skops.io  # noqa: F401 - imports every scikit-learn estimator module (~0.5 s)

    import flows.labels  # noqa: F401
    import flows.monitoring  # noqa: F401
    import flows.registry  # noqa: F401
    import flows.retraining  # noqa: F401
    import flows.scoring  # noqa: F401
    import flows.training  # noqa: F401
    import flows.validation  # noqa: F401
    from loopml.cli import app  # noqa: F401


def main() -> int:
    from loopml.cli.stack.local_server import idle_seconds

    remember_environment()
    home = home_of(ORIGINAL_ENVIRON)
    started = time.monotonic()
    try:
        warm = _start(home, sys.argv[1] if len(sys.argv) > 1 else None)  # see start_in_background
    finally:
        (home / "warm.starting").unlink(missing_ok=True)
    if warm is None:
        print("loopml warm: no local Prefect server of this home runs; not starting", flush=True)
        return 0
    print(
        f"loopml warm: ready in {time.monotonic() - started:.1f} s (pid {os.getpid()})", flush=True
    )
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, warm.on_signal)
    reason = "stopped"
    try:
        max_mb = float(os.environ.get(MAX_MB_VARIABLE) or DEFAULT_MAX_MB)
        reason = warm.run(idle_seconds(ORIGINAL_ENVIRON), max_mb)
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record_path(home).read_text()).get("pid") == os.getpid():
                record_path(home).unlink()
        print(f"loopml warm: exiting ({reason}) after {warm.commands} command(s)", flush=True)
    return 0


def _start(home: Path, project: str | None) -> WarmProcess | None:
    """Settings applied, the libraries imported, listening, ``warm.json`` written; ``None``
    when this home has no local server (commands then use the user's Prefect API)."""
    from loopml.cli.common import connect_prefect, process_settings
    from loopml.settings import read_server_record

    settings = process_settings()
    server = read_server_record(settings.server_file)
    if server is None or settings.prefect_api_from_user:
        return None
    connect_prefect(settings)
    _warm_up()
    # Before listening, not beside it: no command shares the process with the load.
    if project:
        preload_champion(settings, project)
    # What the imports left is there for good: out of the collector's sight (gc.freeze), and
    # its automatic passes made rare; each command's garbage is collected after it answers.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    warm = WarmProcess(home, int(server["pid"]))
    record = {
        "pid": os.getpid(),
        "port": warm.listener.getsockname()[1],
        "token": warm.token,
        "fingerprint": fingerprint(ORIGINAL_ENVIRON),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from loopml.credentials import write_private

    write_private(record_path(home), json.dumps(record, indent=2))
    return warm


if __name__ == "__main__":
    sys.exit(main())
