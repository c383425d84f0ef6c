"""Where loopml keeps its state, read from the environment once, in the entry point.

Nothing here runs at import time: call :func:`load_settings` and pass the result down.

The entry points are a CLI command (``loopml.cli.common.process_settings``) and a flow run
(``loopml.runtime.open_runtime``, first in each flow body, and ``flows/inbox.py``): a deployment
run's process has nothing but its environment. Below them settings travel as the
:class:`Settings` (inside a ``Runtime``) object; no code below an entry point reads the
environment back. Settings are deliberately not flow parameters: Prefect stores a flow run's
parameters in its API and shows them in the UI, and these hold database URIs (with their
passwords) and the API's auth string. The environment is written once per process
(``loopml.runtime.configure_process``) for the libraries, which read their own configuration
from it (Prefect, MLflow, OpenMP), and for the processes loopml starts.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from loopml.credentials import read_credentials


@dataclass(frozen=True)
class Settings:
    """Locations and backends for one loopml installation.

    Attributes:
        home: ``LOOPML_HOME``; embedded state lives below it.
        mlflow_tracking_uri: ``MLFLOW_TRACKING_URI`` or SQLite under ``home``.
        mlflow_registry_uri: ``MLFLOW_REGISTRY_URI`` or the tracking URI.
        prefect_api_url: ``PREFECT_API_URL``, else the local server of this home recorded in
            ``server.json`` while it runs, else ``None`` (the first command that needs the
            API starts the local server: ``loopml.cli.stack.local_server``).
        optuna_storage: ``LOOPML_OPTUNA_STORAGE`` or SQLite under ``home``.
        dask_address: ``LOOPML_DASK_ADDRESS``: a Dask scheduler to run tasks on; ``"local"``
            starts a local cluster; empty runs tasks in threads.
        dask_workers: worker count for a local Dask cluster (``LOOPML_DASK_WORKERS``).
        max_threads: native (OpenMP/BLAS) threads per process (``LOOPML_MAX_THREADS``, default
            1). HistGradientBoosting's OpenMP threads slow down many-fold when the cores are
            shared with the servers and runners loopml starts; 1 keeps runs predictable.
        prefect_auth_string: ``PREFECT_API_AUTH_STRING``, else the local server's (from
            ``credentials.json``).
        prefect_api_from_user: ``PREFECT_API_URL`` was set by the user: loopml then starts
            no local server.
    """

    home: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str
    prefect_api_url: str | None
    optuna_storage: str
    dask_address: str
    dask_workers: int
    max_threads: int = 1
    prefect_auth_string: str | None = None
    prefect_api_from_user: bool = False

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def data_docs_dir(self) -> Path:
        return self.home / "data_docs"

    @property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    @property
    def labels_dir(self) -> Path:
        return self.home / "labels"

    @property
    def ledger_dir(self) -> Path:
        return self.home / "ledger"

    @property
    def monitoring_dir(self) -> Path:
        return self.home / "monitoring"

    @property
    def evidently_workspace(self) -> Path:
        return self.home / "evidently"

    @property
    def inbox_dir(self) -> Path:
        return self.home / "inbox"

    @property
    def references_dir(self) -> Path:
        return self.home / "references"

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def server_file(self) -> Path:
        """The local Prefect server's record (URL, pids) while it runs (0600)."""
        return self.home / "server.json"


def read_server_record(server_file: Path) -> dict | None:
    """The record of this home's local Prefect server, or ``None`` when it is not running."""
    try:
        record = json.loads(server_file.read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read settings from the environment (``os.environ`` by default)."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("LOOPML_HOME") or ".loopml").expanduser().resolve()
    tracking = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    registry = env.get("MLFLOW_REGISTRY_URI") or tracking
    prefect_url = env.get("PREFECT_API_URL") or None
    prefect_auth = env.get("PREFECT_API_AUTH_STRING") or None
    from_user = prefect_url is not None
    if not from_user:
        record = read_server_record(home / "server.json")
        if record is not None:
            prefect_url = record.get("api_url")
            credentials = read_credentials(home)
            prefect_auth = credentials.prefect_auth_string if credentials else None
    optuna = env.get("LOOPML_OPTUNA_STORAGE") or f"sqlite:///{home / 'optuna.db'}"
    return Settings(
        home=home,
        mlflow_tracking_uri=tracking,
        mlflow_registry_uri=registry,
        prefect_api_url=prefect_url,
        optuna_storage=optuna,
        dask_address=env.get("LOOPML_DASK_ADDRESS", ""),
        dask_workers=int(env.get("LOOPML_DASK_WORKERS", "2")),
        max_threads=int(env.get("LOOPML_MAX_THREADS", "1")),
        prefect_auth_string=prefect_auth,
        prefect_api_from_user=from_user,
    )


def show_progress() -> bool:
    """Whether commands show progress on stderr: at a terminal, or as LOOPML_PROGRESS=1/0 says."""
    forced = os.environ.get("LOOPML_PROGRESS")
    if forced is not None:
        return forced.strip().lower() not in {"0", "false", "no", ""}
    return sys.stderr.isatty()


# MLflow's own knobs, bounded so a dead tracking server fails a command in seconds (MLflow's
# defaults: 7 retries, backoff factor 2, 120 s timeout -> minutes per call). Users override
# them by setting the same variables.
MLFLOW_RETRY_BUDGET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def mlflow_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """MLflow variables for every process loopml runs or starts.

    Pickle deserialization is always off (a model artifact must never run code when loaded;
    loopml logs skops); the retry budget applies unless the user set those variables.
    """
    env = os.environ if environ is None else environ
    budget = {key: env.get(key) or value for key, value in MLFLOW_RETRY_BUDGET.items()}
    return {**budget, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


def prefect_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that point Prefect at this installation.

    Must be applied before ``prefect`` is first imported (Prefect reads its settings then).
    """
    env = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # INFO reaches the Prefect UI (run logs); the console shows it as progress only to a
        # person at a terminal (LOOPML_PROGRESS=1/0 forces it), so scripts get one error line.
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "INFO" if show_progress() else "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "DO_NOT_TRACK": "1",
        # Read by OpenMP/BLAS when they load: set before scikit-learn is imported.
        "OMP_NUM_THREADS": str(settings.max_threads),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    if settings.prefect_api_url:
        env["PREFECT_API_URL"] = settings.prefect_api_url
    if settings.prefect_auth_string:
        env["PREFECT_API_AUTH_STRING"] = settings.prefect_auth_string
    return env
