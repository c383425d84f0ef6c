"""Helpers for the model-maintenance tests (scoring, labels, monitoring, retraining).

Each test module trains its own small champion once (:func:`maintained_project`, used from a
module-scoped fixture): 2,000 Telco rows, logistic regression only, 3 search trials. The rest of
the Telco table is the pool that batches are drawn from, so "clean" batches come from the same
distribution as the champion's training data without repeating its rows.

Everything runs for real: flows in this process against the session's Prefect server
(``prefect_server`` in ``tests/conftest.py``), MLflow on SQLite under a temporary LOOPML_HOME.
Prefect events and artifacts are read back through the server's REST API, as a user's tooling
(or the Prefect UI) would see them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from threadpoolctl import threadpool_limits

from tests.conftest import init_project

TRAINING_ROWS = 2_000
TRAINING_SEED = 7
SEARCH_TRIALS = 3


@dataclass
class MaintainedProject:
    """A loopml project with a trained champion, in its own LOOPML_HOME."""

    name: str
    home: Path
    project_dir: Path
    api_url: str
    training_frame: pd.DataFrame
    pool: pd.DataFrame
    train_result: dict[str, Any]
    started_at: datetime

    @property
    def config_path(self) -> Path:
        return self.project_dir / "configs" / f"{self.name}.yaml"

    @property
    def batches_dir(self) -> Path:
        folder = self.project_dir / "batches"
        folder.mkdir(exist_ok=True)
        return folder

    @property
    def resource_id(self) -> str:
        return f"loopml.project.{self.name}"

    def settings(self):
        from loopml.settings import load_settings

        return load_settings()

    def runtime(self):
        from loopml.runtime import open_runtime

        return open_runtime(self.name, self.project_dir)

    def batch(self, rows: int, seed: int, *, with_target: bool = False) -> pd.DataFrame:
        """``rows`` rows drawn from the pool (never the champion's training rows)."""
        frame = self.pool.sample(n=rows, random_state=seed).reset_index(drop=True)
        return frame if with_target else frame.drop(columns="churn")

    def write(self, frame: pd.DataFrame, file_name: str) -> Path:
        path = self.batches_dir / file_name
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path

    def prediction_log(self):
        from loopml.scoring import PredictionLog

        return PredictionLog(self.home / "predictions", self.name)

    def label_store(self):
        from loopml.labels import LabelStore

        return LabelStore(self.home / "labels", self.name)

    def ledger(self) -> list[dict[str, Any]]:
        from loopml.ledger import read_entries

        return read_entries(self.home / "ledger", self.name)

    def _client(self):
        from loopml.registry import mlflow_client

        settings = self.settings()
        return mlflow_client(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)

    def champion(self, alias: str = "champion"):
        """The model version behind ``alias`` (``None`` when no version has it)."""
        from loopml.registry import version_by_alias

        return version_by_alias(self._client(), self.name, alias)

    def versions(self) -> list[str]:
        from loopml.registry import list_versions

        return [str(v.version) for v in list_versions(self._client(), self.name)]

    def version_tags(self, version: str) -> dict[str, str]:
        from loopml.registry import get_version

        return dict(get_version(self._client(), self.name, version).tags)

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def write_config(self, raw: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    @contextmanager
    def config_changed(self, update: Callable[[dict[str, Any]], None]) -> Iterator[None]:
        """The project config edited by ``update`` for the duration of the block."""
        original = self.config_path.read_text()
        raw = yaml.safe_load(original)
        update(raw)
        self.write_config(raw)
        try:
            yield
        finally:
            self.config_path.write_text(original)

    def events(
        self, event: str, *, where: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> list[dict[str, Any]]:
        return read_events(
            self.api_url, event, self.resource_id, since=self.started_at, where=where
        )

    def wait_for_event(
        self,
        event: str,
        *,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float = 45,
    ) -> dict[str, Any]:
        return wait_for_event(
            self.api_url,
            event,
            self.resource_id,
            since=self.started_at,
            where=where,
            timeout=timeout,
        )


def split_telco(telco: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's 2,000 training rows and the pool of the other rows."""
    training = telco.sample(n=TRAINING_ROWS, random_state=TRAINING_SEED)
    pool = telco.drop(index=training.index).reset_index(drop=True)
    return training.reset_index(drop=True), pool


def small_search(raw: dict[str, Any]) -> None:
    """Config edit that keeps searches cheap: logistic regression only, 3 trials."""
    raw["search"]["families"] = ["logistic"]
    raw["search"]["trials"] = SEARCH_TRIALS
    raw["search"]["timeout_seconds"] = 120


@contextmanager
def maintained_project(
    base_dir: Path,
    api_url: str,
    name: str,
    telco: pd.DataFrame,
    *,
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[MaintainedProject]:
    """Init ``name`` on 2,000 Telco rows and train a champion; the environment (LOOPML_HOME,
    MLflow URI, Prefect API) points at it until the block ends."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = base_dir / "home"
    project_dir = base_dir / "project"
    home.mkdir(parents=True)
    project_dir.mkdir(parents=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("LOOPML_HOME", str(home))
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    patch.setenv("PREFECT_API_URL", api_url)
    patch.setenv("OMP_NUM_THREADS", "1")  # the machine is shared: no oversubscribed OpenMP
    for variable in ("MLFLOW_REGISTRY_URI", "LOOPML_OPTUNA_STORAGE", "LOOPML_DASK_ADDRESS"):
        patch.delenv(variable, raising=False)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}), threadpool_limits(limits=1):
            training, pool = split_telco(telco)
            training_path = project_dir / "telco_train.csv"
            training.to_csv(training_path, index=False)
            init_project(training_path, "churn", name, project_dir)
            project = MaintainedProject(
                name=name,
                home=home,
                project_dir=project_dir,
                api_url=api_url,
                training_frame=training,
                pool=pool,
                train_result={},
                started_at=datetime.now(UTC) - timedelta(seconds=5),
            )
            raw = project.read_config()
            small_search(raw)
            if configure is not None:
                configure(raw)
            project.write_config(raw)

            from flows.training import train_flow

            project.train_result = train_flow(
                project=name, project_dir=str(project_dir), trials=SEARCH_TRIALS
            )
            assert project.train_result["promoted"], project.train_result
            yield project
    finally:
        patch.undo()


# --------------------------------------------------------------------------- Prefect API reads


def read_events(
    api_url: str,
    event: str,
    resource_id: str,
    *,
    since: datetime,
    where: Callable[[dict[str, Any]], bool] = lambda e: True,
) -> list[dict[str, Any]]:
    """Events named ``event`` about ``resource_id``, from the server's ``/events/filter``."""
    body = {
        "filter": {
            "occurred": {
                "since": since.isoformat(),
                "until": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
            },
            "event": {"name": [event]},
            "resource": {"id": [resource_id]},
            "order": "DESC",
        },
        "limit": 50,  # the server's page size
    }
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return [e for e in response.json()["events"] if where(e)]


def wait_for_event(
    api_url: str,
    event: str,
    resource_id: str,
    *,
    since: datetime,
    where: Callable[[dict[str, Any]], bool] = lambda e: True,
    timeout: float = 45,
) -> dict[str, Any]:
    """The newest matching event; events travel asynchronously, so poll for a while."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_events(api_url, event, resource_id, since=since, where=where)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no {event} event for {resource_id} reached the Prefect API within {timeout} s"
            )
        time.sleep(1)


def read_artifacts(api_url: str, key: str) -> list[dict[str, Any]]:
    """Every version of the artifact ``key``, newest first, from ``/artifacts/filter``."""
    response = httpx.post(
        f"{api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------- batches


def shifted_batch(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Prices up 30 %, tenure much shorter, and mostly month-to-month contracts."""
    rng = np.random.default_rng(seed)
    shifted = frame.copy()
    shifted["monthly_charges"] = (shifted["monthly_charges"] * 1.3).round(2)
    shifted["tenure"] = (shifted["tenure"] // 3).astype(shifted["tenure"].dtype)
    month_to_month = rng.random(len(shifted)) < 0.9
    shifted.loc[month_to_month, "contract"] = "Month-to-month"
    return shifted
