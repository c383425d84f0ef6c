"""Faults injected into real engines: an MLflow server on PostgreSQL stopped and restarted on
the same port, processes killed with SIGKILL, artifacts edited on disk, state lines cut short.

Skipped (with the PostgreSQL-backed cases) when PostgreSQL at 127.0.0.1:5432 does not answer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, free_port, wait_for_http
from tests.scaleout.conftest import (  # noqa: F401 - the session fixture is used from here
    QUIET_ENV,
    _clean_environ,
    _popen,
    postgres,
    stop_group,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@dataclass
class RestartableMlflow:
    """``mlflow server`` on its own PostgreSQL database, stoppable and restartable in place."""

    backend_store_uri: str
    folder: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> RestartableMlflow:
        command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**_clean_environ(), **QUIET_ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}
        with open(self.folder / "mlflow.log", "a") as handle:
            self.process = _popen(command, env, handle)
        wait_for_http(f"{self.url}/health", timeout, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@pytest.fixture
def mlflow_on_postgres(postgres, tmp_path) -> Iterator[RestartableMlflow]:  # noqa: F811
    database = postgres.create_database("faults")
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    server = RestartableMlflow(postgres.url(database), folder, free_port()).start()
    yield server
    server.stop()
