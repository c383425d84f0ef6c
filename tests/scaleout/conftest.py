"""Real engines for the scale-out tests: PostgreSQL databases, a Prefect server and an MLflow
server on them (plain and with authentication), and a Dask cluster.

Everything is skipped when PostgreSQL at 127.0.0.1:5432 does not answer. Each test module
gets its own databases (dropped at the end of the session) and its own servers.
"""

from __future__ import annotations

import getpass
import os
import secrets
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (
    BIN,
    REPO,
    PrefectServer,
    free_port,
    start_prefect_server,
    wait_for_http,
)

PG_HOST = "127.0.0.1"
PG_PORT = 5432
QUIET_ENV = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # ~0.5 GB and 2 processes instead of ~1.8 GB and 8 (no job runner).
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
# Variables a developer's shell may hold that would point a spawned CLI elsewhere.
FOREIGN_ENV = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "LOOPML_OPTUNA_STORAGE",
    "LOOPML_DASK_ADDRESS",
    "LOOPML_DASK_WORKERS",
    "LOOPML_HOME",
)


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """The developers' PostgreSQL (trust auth), with databases made for this session."""

    user: str
    created: list[str] = field(default_factory=list)

    def url(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://{self.user}@{PG_HOST}:{PG_PORT}/{database}"

    def create_database(self, purpose: str) -> str:
        name = f"loopml_{purpose}_{uuid.uuid4().hex[:8]}"
        self._execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return name

    def query(self, database: str, sql: str, parameters: tuple = ()) -> list[tuple]:
        import psycopg2

        connection = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=self.user, dbname=database, connect_timeout=5
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                return cursor.fetchall()
        finally:
            connection.close()

    def drop_created(self) -> None:
        for name in reversed(self.created):
            # FORCE ends connections a killed server may have left behind (PostgreSQL >= 13).
            self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()

    def _execute(self, sql: str) -> None:
        import psycopg2

        connection = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=self.user, dbname="postgres", connect_timeout=5
        )
        connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()


def _postgres_user() -> str | None:
    """A user PostgreSQL lets in without a password, or None when it does not answer."""
    try:
        import psycopg2
    except ImportError:
        return None
    for user in dict.fromkeys(("postgres", getpass.getuser())):
        try:
            psycopg2.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", connect_timeout=3
            ).close()
            return user
        except psycopg2.Error:
            continue
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    user = _postgres_user()
    if user is None:
        pytest.skip(f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable (trust auth needed)")
    server = Postgres(user)
    yield server
    server.drop_created()


# --------------------------------------------------------------------------- servers


@dataclass
class Service:
    """A server process started here, and where it answers when it is up."""

    url: str
    process: subprocess.Popen
    log: Path
    health_url: str

    def wait_until_ready(self, timeout: float = 180) -> Service:
        try:
            wait_for_http(self.health_url, timeout, self.process)
        except Exception:
            stop_group(self.process)
            raise RuntimeError(
                f"{self.process.args[:3]} did not start:\n{self.log.read_text()[-3000:]}"
            ) from None
        return self


def start_mlflow_server(
    folder: Path,
    backend_store_uri: str,
    *,
    extra_env: dict[str, str] | None = None,
    basic_auth: bool = False,
) -> Service:
    """``mlflow server`` on ``backend_store_uri`` with proxied artifacts in ``folder``.

    With ``basic_auth``, started the way docker-compose does: through
    ``docker/mlflow-entrypoint.sh`` (which writes the auth ini) with ``--app-name basic-auth``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mlflow = [str(BIN / "mlflow"), "server"]
    if basic_auth:
        mlflow = [
            "sh",
            str(REPO / "docker" / "mlflow-entrypoint.sh"),
            *mlflow,
            "--app-name",
            "basic-auth",
        ]
    command = [
        *mlflow,
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**_clean_environ(), **QUIET_ENV, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    with open(folder / "mlflow.log", "w") as handle:  # the child keeps its own descriptor
        process = _popen(command, env, handle)
    # Not waited for here: callers start other servers meanwhile, then wait_until_ready().
    return Service(url, process, folder / "mlflow.log", f"{url}/health")


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen
    workers: subprocess.Popen


def start_dask_cluster(folder: Path, workers: int, env: dict[str, str]) -> DaskCluster:
    """A Dask scheduler and ``workers`` single-threaded worker processes, as in compose."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    dashboard = free_port()
    address = f"tcp://127.0.0.1:{port}"
    full_env = {**_clean_environ(), **QUIET_ENV, **env}
    with open(folder / "scheduler.log", "w") as handle:
        scheduler = _popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                f"127.0.0.1:{dashboard}",
            ],
            full_env,
            handle,
        )
    Service(
        address, scheduler, folder / "scheduler.log", f"http://127.0.0.1:{dashboard}/health"
    ).wait_until_ready()
    log = folder / "workers.log"
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        worker_group = _popen(
            [
                str(BIN / "dask"),
                "worker",
                address,
                "--nworkers",
                str(workers),
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            full_env,
            handle,
        )
    cluster = DaskCluster(address, scheduler, worker_group)
    try:
        _wait_for_workers(address, workers, worker_group, log)
    except Exception:
        stop_dask_cluster(cluster)
        raise
    return cluster


def _wait_for_workers(address: str, count: int, process: subprocess.Popen, log: Path) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        try:
            client.wait_for_workers(count, timeout=120)
        except TimeoutError:
            raise RuntimeError(f"Dask workers did not start:\n{log.read_text()[-3000:]}") from None
    if process.poll() is not None:
        raise RuntimeError(f"Dask workers exited:\n{log.read_text()[-3000:]}")


def stop_dask_cluster(cluster: DaskCluster) -> None:
    stop_group(cluster.workers)
    stop_group(cluster.scheduler)


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started here with ``start_new_session`` and the children it spawned."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def _popen(command: list[str], env: dict[str, str], log_handle) -> subprocess.Popen:
    # A session of its own, so stop_group can end the process and whatever it spawned.
    return subprocess.Popen(
        command, env=env, stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def _clean_environ() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in FOREIGN_ENV}


# --------------------------------------------------------------------------- stacks


@dataclass
class Engines:
    """One scale-out stack and the environment a loopml process needs to use it."""

    postgres: Postgres
    prefect: PrefectServer
    prefect_database: str
    mlflow: Service
    mlflow_database: str
    artifacts_dir: Path
    optuna_database: str
    home: Path
    env: dict[str, str]

    @property
    def optuna_storage(self) -> str:
        return self.postgres.url(self.optuna_database)


@pytest.fixture(scope="module")
def engines(postgres, tmp_path_factory) -> Iterator[Engines]:
    """Prefect, MLflow and Optuna on PostgreSQL, and a two-worker Dask cluster."""
    folder = tmp_path_factory.mktemp("engines")
    prefect_db = postgres.create_database("prefect")
    mlflow_db = postgres.create_database("mlflow")
    optuna_db = postgres.create_database("optuna")
    mlflow = start_mlflow_server(folder / "mlflow", postgres.url(mlflow_db))
    prefect = None
    cluster = None
    try:
        prefect = start_prefect_server(
            folder / "prefect",
            extra_env={
                **QUIET_ENV,
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(
                    prefect_db, "postgresql+asyncpg"
                ),
            },
        )
        mlflow.wait_until_ready()
        home = folder / "home"
        env = {
            "LOOPML_HOME": str(home),
            "PREFECT_API_URL": prefect.api_url,
            "MLFLOW_TRACKING_URI": mlflow.url,
            "LOOPML_OPTUNA_STORAGE": postgres.url(optuna_db),
            **QUIET_ENV,
        }
        # An external scheduler, as in docker-compose (LOOPML_DASK_ADDRESS=tcp://...).
        cluster = start_dask_cluster(folder / "dask", 2, env)
        env["LOOPML_DASK_ADDRESS"] = cluster.address
        yield Engines(
            postgres=postgres,
            prefect=prefect,
            prefect_database=prefect_db,
            mlflow=mlflow,
            mlflow_database=mlflow_db,
            artifacts_dir=folder / "mlflow" / "artifacts",
            optuna_database=optuna_db,
            home=home,
            env=env,
        )
    finally:
        if cluster is not None:
            stop_dask_cluster(cluster)
        if prefect is not None:
            stop_group(prefect.process)
        stop_group(mlflow.process)


@dataclass
class SecuredEngines:
    """MLflow with basic-auth and Prefect with an auth string, both on PostgreSQL."""

    postgres: Postgres
    prefect: PrefectServer
    prefect_auth_string: str
    mlflow: Service
    mlflow_username: str
    mlflow_password: str
    optuna_database: str
    home: Path
    env: dict[str, str]  # everything but the credentials

    @property
    def credentials(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_USERNAME": self.mlflow_username,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string,
        }


@pytest.fixture(scope="module")
def secured_engines(postgres, tmp_path_factory) -> Iterator[SecuredEngines]:
    folder = tmp_path_factory.mktemp("secured")
    mlflow_db = postgres.create_database("mlflow")
    auth_db = postgres.create_database("mlflow_auth")
    prefect_db = postgres.create_database("prefect")
    optuna_db = postgres.create_database("optuna")
    username = "loopml-admin"
    password = secrets.token_urlsafe(24)
    auth_string = f"loopml:{secrets.token_urlsafe(24)}"
    mlflow = start_mlflow_server(
        folder / "mlflow",
        postgres.url(mlflow_db),
        basic_auth=True,
        extra_env={
            "MLFLOW_AUTH_CONFIG_PATH": str(folder / "mlflow-auth" / "basic_auth.ini"),
            "MLFLOW_AUTH_DATABASE_URI": postgres.url(auth_db),
            "MLFLOW_AUTH_ADMIN_USERNAME": username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        },
    )
    prefect = None
    try:
        prefect = start_prefect_server(
            folder / "prefect",
            extra_env={
                **QUIET_ENV,
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(
                    prefect_db, "postgresql+asyncpg"
                ),
                "PREFECT_SERVER_API_AUTH_STRING": auth_string,
            },
        )
        mlflow.wait_until_ready()
        home = folder / "home"
        yield SecuredEngines(
            postgres=postgres,
            prefect=prefect,
            prefect_auth_string=auth_string,
            mlflow=mlflow,
            mlflow_username=username,
            mlflow_password=password,
            optuna_database=optuna_db,
            home=home,
            env={
                "LOOPML_HOME": str(home),
                "PREFECT_API_URL": prefect.api_url,
                "MLFLOW_TRACKING_URI": mlflow.url,
                "LOOPML_OPTUNA_STORAGE": postgres.url(optuna_db),
                # The CLI's own local cluster this time (LOOPML_DASK_ADDRESS=local).
                "LOOPML_DASK_ADDRESS": "local",
                "LOOPML_DASK_WORKERS": "2",
                **QUIET_ENV,
            },
        )
    finally:
        if prefect is not None:
            stop_group(prefect.process)
        stop_group(mlflow.process)


def cli_env(env: dict[str, str]) -> dict[str, str]:
    """The CLI's full environment: this process's, minus foreign pointers, plus ``env``."""
    return {**_clean_environ(), **env}


def run_loopml(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600):
    """``loopml ARGS`` as a user runs it, with exactly the given stack variables."""
    return subprocess.run(
        [str(BIN / "loopml"), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
