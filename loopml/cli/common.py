"""What every ``loopml`` command shares: the common options, running a command, running a flow.

Every command takes ``--json``: the last stdout line is then one JSON object with the result.
Errors are one line on stderr and a non-zero exit; set ``LOOPML_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.settings import Settings

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON line.")]
ProjectDir = Annotated[
    Path,
    typer.Option(
        "--project-dir",
        help="Folder holding configs/ and expectations/ (default: the current directory).",
    ),
]
Projects = Annotated[
    list[str] | None,
    typer.Option(
        "--project",
        help="A project to serve (repeat for several; default: every configs/*.yaml).",
    ),
]
EXIT_FAILURE = 1


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print one ``loopml: error:`` line on stderr and exit with ``code``."""
    first_line = " ".join(str(message).split("\n")).strip()
    typer.echo(f"loopml: error: {first_line}", err=True)
    raise typer.Exit(code)


def run(
    action: Callable[[], dict[str, Any]],
    json_output: bool,
    render: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one command: one clear error line instead of a traceback; JSON or text output."""
    try:
        result = action()
    except LoopmlError as exc:
        if os.environ.get("LOOPML_DEBUG"):
            raise
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the user gets a sentence, LOOPML_DEBUG the traceback
        if os.environ.get("LOOPML_DEBUG"):
            raise
        fail(f"{type(exc).__name__}: {exc}")
    if json_output:
        typer.echo(json.dumps(result, default=str))
    elif render is not None:
        render(result)
    else:
        for key, value in result.items():
            typer.echo(f"{key}: {value}")
    return result


def process_settings() -> Settings:
    """Settings from the environment, applied to this process before Prefect is imported.

    Call it first in a command's action, then import the flow it runs: Prefect reads its
    settings when it is first imported.
    """
    from loopml.runtime import configure_process
    from loopml.settings import load_settings

    settings = load_settings()
    configure_process(settings)
    return settings


def check_inputs(
    project: str, project_dir: Path, files: tuple[Path | None, ...] = (), version: str | None = None
) -> None:
    """Errors the CLI can see before a flow runs, raised before any server is started.

    Why: a typo's one-line error must not wait for Prefect. The flow checks them again.

    Raises:
        ProjectNotFound, ConfigError: the project is unknown or its config invalid.
        DataError: a named file does not exist.
        RegistryError: ``version`` is not a version number.
    """
    from loopml.config import load_config
    from loopml.errors import DataError, RegistryError

    load_config(project, project_dir.resolve())
    for path in files:
        if path is not None and not path.expanduser().is_file():
            raise DataError(f"{path.expanduser().resolve()}: no such file")
    if version is not None and not (version.isdigit() and int(version) > 0):
        raise RegistryError(f"version must be a positive number like 3, not {version!r}")


def connect_prefect(settings: Settings) -> Settings:
    """Settings pointing at a Prefect API: the user's ``PREFECT_API_URL``, else this home's
    local server, started in the background if none runs (then reused by later commands).

    Applied to ``os.environ`` too, so subprocesses and a later first import of Prefect see it.
    """
    import dataclasses

    if settings.prefect_api_from_user:
        return settings
    from loopml.cli.stack.local_server import ensure_local_server
    from loopml.credentials import load_or_create_credentials

    server = ensure_local_server(settings, progress=_progress)
    connected = dataclasses.replace(
        settings,
        prefect_api_url=server.api_url,
        prefect_auth_string=load_or_create_credentials(settings.home).prefect_auth_string,
    )
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_API_AUTH_STRING"] = connected.prefect_auth_string or ""
    return connected


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def call_flow(flow: Any, settings: Settings, /, **parameters: Any) -> Any:
    """Run ``flow`` in this process with the task runner ``settings`` ask for, recorded in
    the Prefect API of :func:`connect_prefect`.

    Validate the command's inputs before calling it: a typo's error then needs no server.
    """
    from flows.naming import project_tags
    from flows.runner import with_runner
    from loopml.cli.stack.deployments import prefect_api

    connected = connect_prefect(settings)
    _console_without_tracebacks()
    _progress_on_stderr()
    project = parameters.get("project")
    tagged = project_tags(project) if project else contextlib.nullcontext()
    try:
        with (
            prefect_api(connected.prefect_api_url, connected.prefect_auth_string),
            tagged,
            without_flow_heartbeats(),
        ):
            return with_runner(flow, connected)(**parameters)
    finally:
        if not connected.prefect_api_from_user:  # the idle time counts from the last use
            from loopml.cli import warm
            from loopml.cli.stack.local_server import used_file

            used_file(connected).touch()
            warm.start_in_background(connected.home, project)  # later commands skip imports


@contextlib.contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """A command's flow run sends no heartbeat events.

    Why: at the end of every flow run Prefect joins its heartbeat thread, which sleeps in
    one-second steps: each command waited up to a second for it (0.3-0.5 s measured on
    ``train`` and ``monitor``). Nothing reads those events: no loopml automation, and the
    Prefect server has no service that marks runs crashed by them. Deployment runs (``loopml
    up``'s runner) keep theirs.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@dataclass(frozen=True)
class CheckedProject:
    """A command's project whose inputs were checked: runs its flows with ``project`` and
    ``project_dir`` filled in."""

    name: str
    project_dir: Path
    settings: Settings

    def run_flow(self, flow: Any, /, **parameters: Any) -> Any:
        return call_flow(
            flow,
            self.settings,
            project=self.name,
            project_dir=str(self.project_dir.resolve()),
            **parameters,
        )


def checked_project(
    name: str, project_dir: Path, files: tuple[Path | None, ...] = (), *, version: str | None = None
) -> CheckedProject:
    """Settings applied to the process (:func:`process_settings`) and the inputs checked
    (:func:`check_inputs`): import the command's flow after this, then ``run_flow`` it."""
    check_inputs(name, project_dir, files, version=version)  # first: a typo's error is instant
    return CheckedProject(name, project_dir, process_settings())


def resolve_path(path: Path | None) -> str | None:
    """``path`` made absolute (flow parameters are strings), or ``None``."""
    return None if path is None else str(path.expanduser().resolve())


class _NoRunErrors:
    """A console log filter: a failed run's ERROR records (with tracebacks) stay in the Prefect
    UI; on the console the user gets loopml's own one-line reason instead. Prefect's notice
    that its event queue is still draining at exit is dropped too (the events are sent), and
    libraries' Python warnings (``LOOPML_DEBUG`` shows them all)."""

    def filter(self, record: Any) -> bool:
        if record.levelno >= 40:  # ERROR and above
            return False
        if record.name == "py.warnings":  # a library's warning: not a loopml line
            return False
        return not str(record.msg).startswith("Still processing items")


class _NoRunProgress:
    """A console log filter while progress is shown: a run's INFO lines are written by the
    progress handler instead, and libraries' INFO lines (GX's temporary docs folder) stay off."""

    def filter(self, record: Any) -> bool:
        return record.levelno >= 30  # WARNING and above


def _progress_on_stderr() -> None:
    """Stage and trial lines with the elapsed time on stderr (:mod:`loopml.cli.progress`), for a
    person at a terminal or with ``LOOPML_PROGRESS=1``; stdout keeps only the result."""
    from loopml.settings import show_progress

    if not show_progress():
        return
    from loopml.cli.progress import install_progress

    install_progress()
    _filter_console(_NoRunProgress)


def _console_without_tracebacks() -> None:
    """Keep run errors off the console (the Prefect UI keeps them); ``LOOPML_DEBUG`` shows them."""
    if os.environ.get("LOOPML_DEBUG"):
        return
    _filter_console(_NoRunErrors)


def _filter_console(kind: type) -> None:
    """Add a ``kind`` filter to every Prefect console handler (once)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(existing, kind) for existing in handler.filters
            ):
                handler.addFilter(kind())
