"""Deployment runs forked from a process that has already imported the flows and their libraries.

Why: Prefect 3.8's runner starts each run of a served deployment in a fresh Python process
(``prefect.flow_engine.run_flow_in_subprocess``, multiprocessing *spawn*). Every inbox run and
every retraining paid 6-8 s importing Prefect, the flows, scikit-learn, MLflow, Great
Expectations and Evidently before its work. The runner of ``loopml up`` starts those processes
from a multiprocessing *fork server* instead: one process imports :data:`PRELOAD` once, and each
run is a fork of it. A run is still its own process, started by Prefect's runner the same way
(its own memory, exit code and pid, killed by pid on cancel); only the imports are already done.

Why a fork server and not ``fork``: the runner has threads (event loop, API clients), and a
fork could copy a lock another thread holds. The fork server has one thread and only imports.

How: ``run_flow_in_subprocess`` asks ``multiprocessing.get_context("spawn")`` and Prefect has no
setting for it. :func:`use_forkserver` gives that module a ``multiprocessing`` whose ``"spawn"``
context is the fork server's. That is a Prefect internal: tests/unit/test_runner_forkserver.py
fails when it changes, and :func:`use_forkserver` keeps Prefect's spawn (and says why) when the
module no longer looks as expected. ``LOOPML_RUNNER_FORKSERVER=0`` keeps spawn too.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.forkserver
import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

VARIABLE = "LOOPML_RUNNER_FORKSERVER"

# What a deployment run imports: the flows, and the libraries the pure modules import inside
# their functions the first time a run needs them (scoring, validation, the Evidently report,
# the search, registration, the model card's figures).
PRELOAD = (
    "flows.inbox",
    "flows.scoring",
    "flows.monitoring",
    "flows.retraining",
    "flows.training",
    "flows.labels",
    "prefect.flow_engine",
    "prefect._internal.control_listener",
    "great_expectations",
    "evidently",
    "evidently.sdk.local",
    "mlflow.sklearn",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "skops.io",
    "optuna",
    "fairlearn.metrics",
    "matplotlib.pyplot",
)

_EXPECTED_CALL = 'multiprocessing.get_context("spawn")'


class _ForkServerMultiprocessing:
    """``multiprocessing`` as ``prefect.flow_engine`` sees it: its "spawn" is the fork server."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context if method == "spawn" else multiprocessing.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Off only when ``LOOPML_RUNNER_FORKSERVER`` is ``0``/``false``/``no``/``off``."""
    raw = (os.environ if environ is None else environ).get(VARIABLE, "").strip().lower()
    return raw not in {"0", "false", "no", "off"}


def prefect_start_method_hook(engine: ModuleType) -> str | None:
    """Why ``engine`` (``prefect.flow_engine``) cannot be pointed at the fork server, or None."""
    if getattr(engine, "multiprocessing", None) is not multiprocessing and not isinstance(
        getattr(engine, "multiprocessing", None), _ForkServerMultiprocessing
    ):
        return "prefect.flow_engine no longer imports multiprocessing"
    runner = getattr(engine, "run_flow_in_subprocess", None)
    if runner is None:
        return "prefect.flow_engine.run_flow_in_subprocess is gone"
    try:
        source = inspect.getsource(runner)
    except (OSError, TypeError):
        return "the source of prefect.flow_engine.run_flow_in_subprocess cannot be read"
    if _EXPECTED_CALL not in source:
        return f"run_flow_in_subprocess no longer calls {_EXPECTED_CALL}"
    return None


def use_forkserver(preload: Iterable[str] = PRELOAD) -> str | None:
    """Start this process's deployment runs from a fork server that imported ``preload``.

    Call it in the runner process before it serves. The fork server starts at once and imports
    in the background, so the first run does not wait for it. Returns None when runs will be
    forked, else the reason they keep Prefect's spawn.
    """
    if not enabled():
        return f"{VARIABLE} is off"
    from prefect import flow_engine

    reason = prefect_start_method_hook(flow_engine)
    if reason is not None:
        return reason
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    flow_engine.multiprocessing = _ForkServerMultiprocessing(context)  # type: ignore[attr-defined]
    multiprocessing.forkserver.ensure_running()
    return None
