"""The inbox's files and state: which files are ready, where they go, what was seen, the lock.

A project's inbox is ``$LOOPML_HOME/inbox/NAME/``; ``inbox.jsonl`` there remembers the last
outcome per content hash, ``.lock`` keeps two polls from working on it at once. The inbox flow
(flows/inbox.py) drives these through tasks/inbox.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopml.data import CSV_SUFFIXES, PARQUET_SUFFIXES
from loopml.ledger import append_jsonl, read_jsonl

TABLE_SUFFIXES = CSV_SUFFIXES | PARQUET_SUFFIXES
PARTIAL_SUFFIXES = {".part", ".tmp", ".partial", ".crdownload"}
PROCESSED = "processed"
QUARANTINED = "quarantined"
FAILED = "failed"
STATE_FILE = "inbox.jsonl"
MAX_ATTEMPTS = 3  # an unexpected error is retried on later polls, then the file moves to failed/


def ready_files(folder: Path, settle_seconds: float, now: float | None = None) -> list[Path]:
    """Table files in ``folder`` (not its subfolders) that are complete, oldest first.

    Hidden files, partial-download suffixes and files modified in the last ``settle_seconds``
    are left for a later poll.
    """
    now = time.time() if now is None else now
    candidates = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if not path.is_file() or path.name.startswith(".") or not _is_table(path):
            continue
        stat = path.stat()
        if stat.st_size == 0 or now - stat.st_mtime < settle_seconds:
            continue
        candidates.append((stat.st_mtime, path.name, path))
    return [path for _, _, path in sorted(candidates)]


def _is_table(path: Path) -> bool:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in PARTIAL_SUFFIXES:
        return False
    if suffixes[-1:] in ([".gz"], [".zip"]):
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in TABLE_SUFFIXES


def move_aside(path: Path, folder: Path, batch_id: str) -> Path:
    """Move ``path`` into ``folder`` without overwriting anything already there."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{batch_id}{path.suffix}"
    counter = 1
    while target.exists():
        target = folder / f"{path.stem}.{batch_id}.{counter}{path.suffix}"
        counter += 1
    return path.rename(target)


def read_state(folder: Path) -> dict[str, dict[str, Any]]:
    """The last recorded outcome per content hash (``batch_id``); a torn line is skipped."""
    entries = read_jsonl(folder / STATE_FILE)
    return {entry["batch_id"]: entry for entry in entries if "batch_id" in entry}


def record_outcome(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` (stamped with the time) to the inbox state; returns the stamped entry."""
    record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    return append_jsonl(folder / STATE_FILE, record)


@contextlib.contextmanager
def inbox_lock(folder: Path) -> Iterator[bool]:
    """Yield True when this run holds the project's inbox (False: another run is busy)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ready_signature(folder: Path, settle_seconds: float) -> tuple[tuple[str, int, int], ...]:
    """What is ready in ``folder`` now, as ``(name, size, mtime_ns)`` per file: a watcher starts
    an inbox run when this changes (and is not empty), not on every look."""
    signature = []
    for path in ready_files(folder, settle_seconds):
        with contextlib.suppress(FileNotFoundError):  # taken by a run meanwhile
            stat = path.stat()
            signature.append((path.name, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def outcome_line(entry: dict[str, Any], project: str | None = None) -> str:
    """One inbox outcome as a line, e.g. ``telco: a.csv (batch b1f2) processed: 500 rows, v3,
    drift detected (share 0.56)`` (without ``project``, no ``telco:``)."""
    head = f"{entry.get('file')} (batch {entry.get('batch_id')}) {entry.get('status')}"
    head = f"{project}: {head}" if project else head
    status = entry.get("status")
    if status == PROCESSED:
        drift = "drift detected" if entry.get("drift_detected") else "no drift"
        share = entry.get("drift_share")
        details = [
            f"{entry.get('rows')} rows",
            f"v{entry.get('model_version')}",
            drift + ("" if share is None else f" (share {share:.2f})"),
        ]
        if entry.get("performance_degraded"):
            details.append("performance degraded")
        return f"{head}: {', '.join(details)}"
    if status == "duplicate":
        return f"{head}: these bytes were processed before; filed under processed/"
    reason = " ".join(str(entry.get("reason") or "").split())
    if status == "retry":
        return f"{head}: attempt {entry.get('attempts')} of {MAX_ATTEMPTS} failed: {reason}"
    return f"{head}: {reason}" if reason else head


def inbox_state(folder: Path) -> dict[str, Any]:
    """The inbox at a glance for ``loopml status``: files waiting in it, files parked in
    ``failed/`` and ``quarantined/``, and the last outcome recorded."""
    entries = read_jsonl(folder / STATE_FILE)
    last = next((entry for entry in reversed(entries) if entry.get("status") != "retry"), None)
    return {
        "inbox_dir": str(folder),
        "waiting": len(ready_files(folder, settle_seconds=0)),
        "failed": _count_files(folder / FAILED),
        "quarantined": _count_files(folder / QUARANTINED),
        "last": last,
    }


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.iterdir() if path.is_file()) if folder.is_dir() else 0
