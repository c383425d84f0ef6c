"""Shared fixtures: one real Prefect server per session, a fresh LOOPML_HOME per test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The machine has no internet: keep every library from phoning home, before any import.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as loopml's entry points do (LOOPML_MAX_THREADS)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "loopml" / "data" / "telco_churn.csv"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen


def start_prefect_server(home: Path, extra_env: dict[str, str] | None = None) -> PrefectServer:
    """A real ``prefect server start`` on a free loopback port (SQLite in ``home`` by default)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        # Else the UI calls the API on the default port 4200 and shows "Can't connect".
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        **(extra_env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_http(f"{api_url}/health", 120, process)
    except Exception:
        process.kill()
        raise RuntimeError((home / "server.log").read_text()[-3000:]) from None
    return PrefectServer(api_url=api_url, home=home, process=process)


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    server = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    yield server
    stop_process(server.process)


@pytest.fixture
def prefect_api(prefect_server, monkeypatch) -> Iterator[str]:
    """Point in-process flows and spawned CLIs at the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server.api_url)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server.api_url


@pytest.fixture
def loopml_home(tmp_path, monkeypatch) -> Path:
    """A fresh LOOPML_HOME with embedded MLflow/Optuna stores under it."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOOPML_HOME", str(home))
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LOOPML_OPTUNA_STORAGE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    home.mkdir()
    return home


@pytest.fixture(scope="session")
def telco_frame():
    import pandas as pd

    return pd.read_csv(SAMPLE)


@pytest.fixture
def project_dir(tmp_path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir()
    return directory


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``loopml ARGS`` as a user would (a subprocess, the installed console script)."""
    return subprocess.run(
        [str(BIN / "loopml"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_json(stdout: str) -> dict:
    """The contract: with --json the last stdout line is one JSON object."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def init_project(
    data: Path, target: str, name: str, project_dir: Path, **options: str | None
) -> dict:
    """``loopml init`` through the Python API (fast: no subprocess)."""
    from loopml.project import initialise_project

    return initialise_project(
        str(data),
        target=target,
        name=name,
        task=options.get("task"),
        positive_label=options.get("positive_label"),
        id_column=options.get("id_column"),
        time_column=options.get("time_column"),
        sql_url=options.get("sql_url"),
        project_dir=project_dir,
    )


def has_chromium() -> bool:
    return shutil.which("chromium") is not None
