"""Library prints routed to the run log, so the console holds only loopml's own lines."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

from prefect.logging import get_run_logger


class _LogLines(io.TextIOBase):
    """A text stream that sends each complete line to ``logger`` at INFO."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self._logger = logger
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                self._logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._logger.info("%s", self._pending.rstrip())
        self._pending = ""


@contextlib.contextmanager
def library_output_to_log() -> Iterator[None]:
    """Send what libraries print on stdout/stderr inside the block (MLflow's "Successfully
    registered model" and "Created version" lines go straight to ``sys.stderr``), and the
    warnings they raise, to the run log: the Prefect UI keeps them, the console shows them only
    as progress to a terminal."""
    logger = get_run_logger()
    stream = _LogLines(logger)
    with (
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(stream),
        contextlib.redirect_stderr(stream),
    ):
        try:
            yield
        finally:
            stream.flush()
            for warning in caught:  # e.g. MLflow's hint on integer columns in the signature
                logger.info("%s: %s", warning.category.__name__, warning.message)
