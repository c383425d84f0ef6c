"""Retraining claims and the cooldown, read from the project's ledger (so they survive restarts).

A retraining writes ``retrain_started`` (its claim on the triggering batch) before it learns
anything. The claim holds while the flow run is alive or after it finished; a run that failed,
or that is no longer running without having finished (SIGKILL, a crash, ``loopml up`` killed),
gives its batch back. Whether a run is alive is the orchestrator's knowledge: callers pass
``is_live(flow_run_id)``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from loopml import ledger
from loopml.errors import LoopmlError

FINISHED_ACTIONS = frozenset({"promoted", "refused"})
IsLive = Callable[[str], bool]


class RetrainingBusy(LoopmlError):
    """Another retraining of the same project holds the lock."""


@contextmanager
def retraining_lock(locks_dir: Path, project: str) -> Iterator[None]:
    """At most one retraining per project at a time on this LOOPML_HOME.

    The lock is held by the live process only (the kernel drops it when the process dies), so
    whoever holds it knows every other open claim belongs to a run that is gone.

    Raises:
        RetrainingBusy: another process holds it.
    """
    path = locks_dir / f"retrain-{project}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainingBusy(
                f"a retraining of project {project!r} is already running"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def release_dead_claims_locked(ledger_dir: Path, project: str) -> list[dict[str, Any]]:
    """Release every open claim; call only while holding :func:`retraining_lock`.

    Holding the lock means no other retraining of the project runs, so a claim that neither
    finished nor failed belongs to a run that died (SIGKILL, crash, ``up`` killed): its batch
    is given back with a ``retrain_failed`` entry saying so.
    """
    released = []
    for claim in dead_claims(ledger.read_entries(ledger_dir, project), lambda _: False):
        released.append(
            ledger.append_entry(
                ledger_dir,
                project,
                {
                    "action": "retrain_failed",
                    "batch_id": claim.get("batch_id"),
                    "reason": "the retraining run is no longer running (killed or crashed): "
                    "its claim is released",
                    "flow_run_id": _run_id(claim),
                },
            )
        )
    return released


def release_dead_claims(ledger_dir: Path, locks_dir: Path, project: str) -> list[dict[str, Any]]:
    """Release the claims of dead retraining runs, unless a retraining is running now.

    ``loopml up`` may call this at start; a retraining calls the locked variant itself.
    """
    try:
        with retraining_lock(locks_dir, project):
            return release_dead_claims_locked(ledger_dir, project)
    except RetrainingBusy:
        return []


def _run_id(entry: dict[str, Any]) -> str | None:
    return entry.get("flow_run_id") or (entry.get("trigger") or {}).get("flow_run_id")


def dead_claims(entries: list[dict[str, Any]], is_live: IsLive) -> list[dict[str, Any]]:
    """``retrain_started`` entries whose run neither finished nor failed and is not running."""
    ended = {
        _run_id(e)
        for e in entries
        if e.get("action") in FINISHED_ACTIONS or e.get("action") == "retrain_failed"
    }
    return [
        e
        for e in entries
        if e.get("action") == "retrain_started"
        and _run_id(e)
        and _run_id(e) not in ended
        and not is_live(str(_run_id(e)))
    ]


def claimed_by(entries: list[dict[str, Any]], batch_id: str, is_live: IsLive) -> bool:
    """Whether a retraining holds ``batch_id``: it started and did not fail or die."""
    failed = {_run_id(e) for e in entries if e.get("action") == "retrain_failed"}
    dead = {_run_id(e) for e in dead_claims(entries, is_live)}
    return any(
        e.get("action") == "retrain_started"
        and e.get("batch_id") == batch_id
        and _run_id(e) not in failed | dead
        for e in entries
    )


def cooldown_left(
    entries: Iterable[dict[str, Any]], now: datetime, cooldown_seconds: float
) -> float:
    """Seconds left in the cooldown opened by the last event-triggered retraining (0: none).

    Read from the ledger, not from the automation's in-memory window, so restarting
    ``loopml up`` does not open a new window.
    """
    last = None
    for entry in entries:
        trigger = entry.get("trigger") or {}
        if entry.get("action") == "retrain_started" and trigger.get("event") and entry.get("at"):
            last = entry["at"]
    if last is None:
        return 0.0
    elapsed = (now - datetime.fromisoformat(last)).total_seconds()
    return max(0.0, cooldown_seconds - elapsed)


def new_evidence(
    batch_id: str | None, event: str | None, verdicts: Iterable[dict[str, Any]]
) -> bool:
    """Whether the trigger brings new labelled evidence that the champion is degraded.

    The degradation event is only emitted for labelled rows the champion did badly on; a
    drift event counts when the monitoring verdict of its batch also judged the champion
    degraded. The claim ensures a batch still never causes two retrainings.
    """
    if not batch_id:
        return False
    if event in {"loopml.performance.degraded", "loopml.retraining.evidence"}:
        return True
    return any(v.get("batch_id") == batch_id and v.get("performance_degraded") for v in verdicts)


def evidence_inside_cooldown(
    entries: list[dict[str, Any]], now: datetime, cooldown_seconds: float, batch_id: str
) -> bool:
    """Whether a degraded labelled batch arrives inside the cooldown and has not retrained yet.

    Then the automation's window would drop its events, so the caller announces the new
    evidence on its own event; the retraining still claims the batch (never twice).
    """
    return cooldown_left(entries, now, cooldown_seconds) > 0 and not claimed_by(
        entries, batch_id, lambda _: True
    )


def promotion_to_check(entries: list[dict[str, Any]], champion: str) -> dict[str, Any] | None:
    """The gate promotion that made ``champion`` champion, if the version it replaced is known
    and nothing moved the alias since (then new labelled rows may still undo it)."""
    for entry in reversed(entries):
        if entry.get("action") not in {"promoted", "rolled_back"}:
            continue
        if entry.get("action") == "promoted" and str(entry.get("version")) == str(champion):
            return entry if entry.get("previous_champion") and "decision" in entry else None
        return None
    return None
