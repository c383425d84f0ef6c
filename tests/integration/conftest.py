"""Fixtures for the integration tests: small data, unique project names, one native thread."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from tests.conftest import SAMPLE

TELCO_SAMPLE_ROWS = 2_000


@pytest.fixture
def single_native_thread(monkeypatch) -> Iterator[None]:
    """One OpenMP/BLAS thread, here and in spawned CLIs.

    The test machine is shared by concurrent jobs; oversubscribed OpenMP made one
    HistGradientBoosting fit ~25x slower (118 s vs 4.4 s for three fits, measured), which says
    nothing about loopml. Prefect runs sync flows and tasks in the calling thread, so the
    thread-local limit reaches them. Opt in with ``pytestmark = usefixtures(...)``.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def telco_sample(tmp_path_factory) -> Path:
    """A seeded 2,000-row sample of the bundled Telco table (training stays quick)."""
    import pandas as pd

    path = tmp_path_factory.mktemp("telco-sample") / "telco_2000.csv"
    pd.read_csv(SAMPLE).sample(TELCO_SAMPLE_ROWS, random_state=7).to_csv(path, index=False)
    return path


def unique_project_name(prefix: str) -> str:
    """Projects share the session's Prefect server: unique names keep events and artifacts apart."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def project_name(request) -> str:
    return unique_project_name(request.node.name.split("[")[0].removeprefix("test_")[:24])
