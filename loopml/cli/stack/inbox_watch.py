"""The inbox watcher of ``loopml up``: a file that is ready starts an inbox run; each outcome
is one line on the console.

Why not a schedule: an interval deployment makes a flow run on every poll, nearly all of them
empty (188 of 202 runs in 8 minutes in issue 14). Here the ``loopml up`` process lists each
project's inbox folder every ``schedules.inbox_poll_seconds`` (a directory listing, no Prefect
call) and starts a run of the ``inbox-NAME`` deployment only when the ready files changed since
the last run it started, and no inbox run is in flight. Files that stay (no champion yet, an
attempt that failed and waits for a retry) get one more run after
``schedules.inbox_sweep_seconds``. New lines of ``inbox.jsonl`` (what each run did with each
file) are printed as they appear.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flows.deployments import deployment_name
from loopml.config import ProjectConfig
from loopml.inbox import STATE_FILE, outcome_line, ready_signature
from loopml.ledger import read_jsonl

SETTLE_SECONDS = 2.0  # the inbox flow's own default: a file changed more recently is not ready
TICK_SECONDS = 1.0


@dataclass
class _Watched:
    """One project's inbox: what the last started run saw, and how much of the state was read."""

    config: ProjectConfig
    folder: Path
    started: tuple = ()
    started_at: float = 0.0
    next_look: float = 0.0
    outcomes_read: int = 0
    state_size: int = -1


@dataclass
class InboxWatcher:
    """Watches every project's inbox in a thread; ``start_run(deployment)`` starts a run and
    ``in_flight(deployment)`` says whether one is pending or running (both call Prefect)."""

    inbox_dir: Path
    configs: list[ProjectConfig]
    start_run: Callable[[str], None]
    in_flight: Callable[[str], bool]
    progress: Callable[[str], None] = print
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _watched: list[_Watched] = field(default_factory=list)
    _last_error: str | None = None

    def start(self) -> InboxWatcher:
        """Watch from now on; outcomes recorded before this are not printed again."""
        self._watched = []
        for config in self.configs:
            folder = self.inbox_dir / config.name
            self._watched.append(
                _Watched(config, folder, outcomes_read=len(read_jsonl(folder / STATE_FILE)))
            )
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="loopml-inbox-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching; outcomes recorded since the last look are still printed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for watched in self._watched:
            with contextlib.suppress(OSError):
                self._print_outcomes(watched)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            for watched in self._watched:
                try:
                    self.look(watched, time.monotonic())
                except Exception as exc:  # noqa: BLE001 - the stack must keep running; say it once
                    message = f"inbox {watched.config.name}: {type(exc).__name__}: {exc}"
                    if message != self._last_error:
                        self.progress(f"  {message} (will try again)")
                        self._last_error = message

    def look(self, watched: _Watched, now: float) -> None:
        """Print new outcomes; start an inbox run when new files are ready."""
        self._print_outcomes(watched)
        if now < watched.next_look:
            return
        watched.next_look = now + watched.config.schedules.inbox_poll_seconds
        ready = ready_signature(watched.folder, SETTLE_SECONDS)
        if not ready:
            watched.started = ()
            return
        sweep = watched.config.schedules.inbox_sweep_seconds
        if ready == watched.started and now - watched.started_at < sweep:
            return  # the run we started has them (or left them waiting): not again yet
        deployment = f"inbox/{deployment_name('inbox', watched.config.name)}"
        if self.in_flight(deployment):
            return  # a file it did not list gets its run at a later look
        if ready_signature(watched.folder, SETTLE_SECONDS) != ready:
            # A run filed them and ended while we asked (it moves a file before it ends): a
            # run now would find nothing. Look again at the next tick.
            watched.next_look = now
            return
        self.start_run(deployment)
        watched.started, watched.started_at = ready, now

    def _print_outcomes(self, watched: _Watched) -> None:
        state = watched.folder / STATE_FILE
        size = state.stat().st_size if state.is_file() else 0
        if size == watched.state_size:
            return
        watched.state_size = size
        entries = read_jsonl(state)
        for entry in entries[watched.outcomes_read :]:
            self.progress(f"inbox {outcome_line(entry, watched.config.name)}")
        watched.outcomes_read = len(entries)
