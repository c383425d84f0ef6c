"""Figures rendered to PNG once: the run's ``plots/`` artifacts and the model card embed the
same bytes (rendering a figure costs tens of milliseconds; a training run has a dozen).

A training run's figures cost it about a second of drawing, all under the GIL, so a thread
cannot overlap them with anything. :func:`render_ahead` draws them in a worker process
instead, on another core, while the run goes on (comparing with the champion, logging the
model); :func:`png_bytes` then takes the finished PNG. Where the worker cannot help (it fails
to start, a figure does not pickle, it dies or hangs), the figure is drawn here as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 80
# How long png_bytes waits for the worker's PNG before drawing the figure itself.
RENDER_WAIT_SECONDS = 60.0

logger = logging.getLogger(__name__)

_rendered: WeakKeyDictionary[Figure, bytes | Future[bytes]] = WeakKeyDictionary()
_worker: ProcessPoolExecutor | None = None
_worker_lock = threading.Lock()
_fork_hook = False


def png_bytes(figure: Figure) -> bytes:
    """``figure`` as PNG (``DPI``), rendered the first time it is asked for (or ahead).

    Figures are finished before they are shown: one changed after its first rendering (or
    after :func:`render_ahead`) keeps its first PNG. Each is laid out by itself (constrained
    or tight layout), so it is drawn once: ``bbox_inches="tight"`` would draw it twice (~30%
    of the time) for the same picture.
    """
    rendered = _rendered.get(figure)
    if isinstance(rendered, Future):
        rendered = _finished(rendered)
    if rendered is None:
        rendered = _render(figure)
    _rendered[figure] = rendered
    return rendered


def _finished(future: Future[bytes]) -> bytes | None:
    """The worker's PNG, or ``None`` when it failed, or hangs (then it is stopped, and the
    figures still queued there are drawn here without waiting for it)."""
    if _worker is None and not future.done():
        return None  # its worker was given up on
    try:
        return future.result(timeout=RENDER_WAIT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the worker's failure costs only the time
        logger.debug("figure worker failed (%s); drawing the figure here", exc)
        if _worker is not None and not future.done():
            _discard_broken_worker(_worker, kill=True)
        return None


def render_ahead(figures: Iterable[Figure | None]) -> None:
    """Start drawing ``figures`` (finished ones; ``None`` is skipped) in the worker process."""
    for figure in figures:
        if figure is None or figure in _rendered:
            continue
        worker = _render_worker()
        if worker is None:
            return
        try:
            # Pickled now: the worker draws the figure as it is at this point.
            _rendered[figure] = worker.submit(_render_pickled, pickle.dumps(figure))
        except Exception as exc:  # noqa: BLE001 - unpicklable figure, broken worker
            logger.debug("figure not rendered ahead (%s)", exc)
            _discard_broken_worker(worker)


def start_render_worker() -> None:
    """Start the worker now (it takes about a second), so it is ready for the first figures."""
    worker = _render_worker()
    if worker is not None:
        with contextlib.suppress(Exception):  # a broken worker shows at the first figure
            worker.submit(int)  # the pool starts its process at the first task


def _render(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _render_pickled(payload: bytes) -> bytes:
    """In the worker: the figure back from its pickle, drawn."""
    return _render(pickle.loads(payload))


def _import_matplotlib() -> None:
    """The worker's start: what drawing needs, imported before the first figure arrives."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401


def _render_worker() -> ProcessPoolExecutor | None:
    """The process's one figure worker, started on first use (``None`` if it cannot be)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            import multiprocessing.util

            try:
                # spawn: a fresh interpreter, never a fork of a process running threads.
                _worker = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_import_matplotlib,
                )
            except Exception as exc:  # noqa: BLE001 - no worker: figures are drawn here
                logger.debug("no figure worker (%s)", exc)
                return None
            # Stopped before the process exits, also when it is a multiprocessing child (a
            # deployment run): its exit joins every child process, and the worker would wait.
            multiprocessing.util.Finalize(None, _stop_worker, exitpriority=100)
            global _fork_hook
            if not _fork_hook:
                os.register_at_fork(after_in_child=_forget_worker_in_child)
                _fork_hook = True
        return _worker


def _forget_worker_in_child() -> None:
    """A fork copies the handle, not the worker: the child starts its own if it draws."""
    global _worker, _worker_lock
    _worker, _worker_lock = None, threading.Lock()


def _discard_broken_worker(worker: ProcessPoolExecutor, *, kill: bool = False) -> None:
    global _worker
    with _worker_lock:
        if _worker is worker:
            _worker = None
    if kill:  # a hung worker would never take the shutdown request
        for process in list((getattr(worker, "_processes", None) or {}).values()):
            process.kill()
    worker.shutdown(wait=False, cancel_futures=True)


def _stop_worker(timeout: float = 5.0) -> None:
    """Stop the worker (a figure it is drawing may finish; one that hangs is killed)."""
    global _worker
    with _worker_lock:
        worker, _worker = _worker, None
    if worker is None:
        return
    processes = list((getattr(worker, "_processes", None) or {}).values())
    worker.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
