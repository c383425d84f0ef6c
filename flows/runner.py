"""The task runner every flow runs with, chosen from settings in the entry point.

Embedded default: Prefect's thread pool. With ``LOOPML_DASK_ADDRESS`` set, prefect-dask's
``DaskTaskRunner``: ``local`` starts a local cluster of ``LOOPML_DASK_WORKERS`` single-threaded
workers, any other value is the address of an existing scheduler (``tcp://host:8786``).
The flows' code is the same either way.
"""

from __future__ import annotations

from typing import Any

from loopml.settings import Settings


def task_runner(settings: Settings) -> Any:
    """A fresh task runner for one flow run."""
    if not settings.dask_address:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=2)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address == "local":
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": settings.dask_workers,
                "threads_per_worker": 1,  # HGB brings its own OpenMP threads: no oversubscription
                "processes": True,
                "dashboard_address": None,
            }
        )
    return DaskTaskRunner(address=settings.dask_address)


def with_runner(flow: Any, settings: Settings) -> Any:
    """``flow`` bound to the runner the settings ask for."""
    return flow.with_options(task_runner=task_runner(settings))
