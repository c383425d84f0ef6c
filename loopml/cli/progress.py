"""Progress of a command's flow run on stderr: each stage and trial, with the time elapsed.

A person at a terminal (or ``LOOPML_PROGRESS=1``) sees lines like::

    [   4.2s] train-telco > validate-batch: done
    [  12.9s] train-telco > search: trial 3 (logistic): roc_auc=0.8412 [1.9s, 8s into the search]

They come from the run's own log records (the same lines the Prefect UI shows), written to
stderr only: stdout keeps the command's result, so with ``--json`` its last line is the JSON.
Prefect's console handler then shows warnings only (no line twice, no library INFO lines).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
MAX_MESSAGE = 160  # a library's paragraph-long warning stays whole in the run log
ENGINE_NOISE = ("Created task run", "Executing ", "Submitting task run", "Beginning subflow")


class ProgressHandler(logging.Handler):
    """Writes a run's INFO records as ``[elapsed] run > stage: message`` lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(level=logging.INFO)
        # The stderr of now: a step that sends library output to the run log redirects
        # sys.stderr to a stream that logs (tasks/logs.py), and writing there would log again.
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:  # warnings keep Prefect's console format
            return
        try:
            line = progress_line(record, time.monotonic() - self.started)
            if line is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - progress must never break the command (nor log)
            pass


def progress_line(record: logging.LogRecord, elapsed: float) -> str | None:
    """The line for one run log record, or ``None`` for the engine's bookkeeping."""
    message = record.getMessage()
    if message.startswith(ENGINE_NOISE):
        return None
    if message.startswith("Finished in state "):
        message = "done" if "Completed(" in message else message.removeprefix("Finished in state ")
    elif message.startswith("Beginning flow run"):
        message = "started"
    run = getattr(record, "flow_run_name", None) or getattr(record, "flow_name", "loopml")
    task = getattr(record, "task_name", None)
    where = f"{run} > {task}" if task else str(run)
    message = " ".join(message.split())
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return f"[{elapsed:6.1f}s] {where}: {message}"


def install_progress() -> ProgressHandler:
    """Add the progress handler to the run loggers (once per process)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, ProgressHandler):
                return handler
    handler = ProgressHandler()
    for name in RUN_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    return handler
