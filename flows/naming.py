"""Flow run names that say what a run does (``monitor-telco-b88327``), not Prefect's random pair,
and the tags every run of a project carries (``loopml``, ``project:NAME``).

Each flow passes ``flow_run_name=run_name("monitor")``; the name is built when the run starts,
from its parameters: the project, then the batch id, the data file's name or the version.
A deployment's runs get the tags from the deployment; a run started from the CLI and a subflow
get them from :func:`project_tags` around the call (Prefect tags a new run, subflows too, with
the tags of the context it is created in). Task runs carry none (:func:`untagged_tasks`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prefect import tags
from prefect.context import TagsContext
from prefect.runtime import flow_run

F = TypeVar("F", bound=Callable[..., Any])

LOOPML_TAG = "loopml"


def tags_of(project: str) -> list[str]:
    """The tags of every run of ``project``."""
    return [LOOPML_TAG, f"project:{project}"]


@contextlib.contextmanager
def project_tags(project: str) -> Iterator[None]:
    """Runs created inside the block (a CLI's flow run, a flow's subflows) carry the project's
    tags."""
    with tags(*tags_of(project)):
        yield


def untagged_tasks(body: F) -> F:
    """A flow body whose task runs are created without the run's tags (the flow run keeps
    them: it was created, tagged, before the body runs).

    Why: Prefect checks every tagged task run against its tags' concurrency limits, one API
    round trip each at the task's start (0.14 s on average, seconds when the server's SQLite
    is busy): 1.6 s of a 3 s ``loopml monitor`` (11 tasks), measured. loopml sets no task
    concurrency limits; subflows get their tags from :func:`project_tags` around the call.
    """

    @functools.wraps(body)
    def without_tags(*args: Any, **kwargs: Any) -> Any:
        with TagsContext(current_tags=set()):
            return body(*args, **kwargs)

    # The signature with its annotations resolved here, in the body's module: Prefect resolves
    # string annotations in the namespace of the function it is given (this module's).
    without_tags.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    return without_tags  # type: ignore[return-value]


def run_name(kind: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable naming a run ``KIND-PROJECT[-DETAIL]``."""

    def name() -> str:
        return run_label(kind, flow_run.parameters or {})

    return name


def run_label(kind: str, parameters: dict) -> str:
    """``KIND-PROJECT[-DETAIL]`` from a run's parameters (the detail: ``batch_id``, else the
    stem of ``data``, else ``v`` + ``version``)."""
    parts = [kind, str(parameters.get("project") or "loopml")]
    if parameters.get("batch_id"):
        parts.append(str(parameters["batch_id"]))
    elif parameters.get("data"):
        parts.append(Path(str(parameters["data"])).stem)
    elif parameters.get("version"):
        parts.append(f"v{parameters['version']}")
    return "-".join(parts)
