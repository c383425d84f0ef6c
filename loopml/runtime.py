"""Everything one project run needs, built once at the entry point and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopml.config import ProjectConfig, load_config, suite_path
from loopml.registry import ensure_experiment, mlflow_client, registry_unavailable
from loopml.settings import Settings, load_settings, mlflow_environment, prefect_environment


@dataclass
class Runtime:
    """Settings, config and clients for one project.

    Attributes:
        settings: installation-wide locations and backends.
        config: the project's validated config.
        project_dir: the folder holding ``configs/`` and ``expectations/``.
        mlflow: the MLflow client (tracking and registry).
        experiment_id: the project's MLflow experiment.
    """

    settings: Settings
    config: ProjectConfig
    project_dir: Path
    mlflow: MlflowClient
    experiment_id: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def suite_path(self) -> Path:
        return suite_path(self.config.name, self.project_dir)


def configure_process(settings: Settings) -> None:
    """Point this process's libraries (and the processes it starts) at ``settings``.

    Called once by an entry point before Prefect or MLflow's fluent API is used. Prefect,
    MLflow and OpenMP read their configuration from the environment, and a deployment run
    started by the runner inherits it; loopml's own code is handed ``settings`` instead.
    """
    os.environ.update(prefect_environment(settings))
    os.environ.update(mlflow_environment())
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = settings.mlflow_registry_uri
    os.environ["LOOPML_HOME"] = str(settings.home)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings.home.mkdir(parents=True, exist_ok=True)
    quiet_library_logs()


def quiet_library_logs() -> None:
    """Keep Optuna's per-trial lines and MLflow's chatter off the console; loopml's own
    progress goes through the Prefect run logger."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "great_expectations", "distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # log_model's serving-input check loads the model through MLflow's loader, which
    # MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false refuses here by design (its warning is noise);
    # loopml loads registered models only after checking their hash (registry.load_version).
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)
    # Each retry of a dead tracking server is a WARNING line; the user gets loopml's one line.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def artifact_location(settings: Settings) -> str | None:
    """Local artifact root for embedded (SQLite/file) tracking; a server decides its own."""
    if settings.mlflow_tracking_uri.startswith(("sqlite:", "file:")) or "://" not in (
        settings.mlflow_tracking_uri
    ):
        return settings.artifacts_dir.as_uri()
    return None


def open_runtime(
    project: str, project_dir: str | Path, settings: Settings | None = None
) -> Runtime:
    """Load the project's config and connect to MLflow.

    Raises:
        ProjectNotFound, ConfigError: the project is unknown or its config is invalid.
    """
    settings = settings or load_settings()
    directory = Path(project_dir).resolve()
    config = load_config(project, directory)
    client = mlflow_client(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)
    try:
        experiment_id = ensure_experiment(client, project, artifact_location(settings))
    except MlflowException as exc:
        raise registry_unavailable(client, exc) from exc
    return Runtime(
        settings=settings,
        config=config,
        project_dir=directory,
        mlflow=client,
        experiment_id=experiment_id,
    )
