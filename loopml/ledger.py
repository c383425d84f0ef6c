"""The promotion history: an append-only JSON-lines ledger per project under LOOPML_HOME.

Every alias move and every gate decision lands here, so ``loopml status`` can show why the
champion is what it is. Appends take an exclusive file lock, so concurrent flows do not interleave.

Also home to the JSON-lines primitives every loopml state log uses (ledger, inbox state,
monitoring history): a process killed mid-write leaves at most one torn line, which readers skip
with a warning naming the file and line, and the next append starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from loopml.errors import RegistryError


class LockTimeout(RegistryError):
    """Another process held a promotion lock for longer than the timeout."""


logger = logging.getLogger("loopml.state")
PROMOTION_LOCK_TIMEOUT_SECONDS = 300.0


def parse_jsonl(lines: list[str], source: Path | str) -> list[dict[str, Any]]:
    """The JSON objects of ``lines``; a torn or invalid line is skipped with a warning."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            logger.warning("skipped torn line %d of %s (%s)", number, source, exc.msg)
            continue
        if not isinstance(record, dict):
            logger.warning("skipped line %d of %s: not a JSON object", number, source)
            continue
        records.append(record)
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines state file, oldest first (empty when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_jsonl(handle.read().splitlines(), path)


def append_jsonl(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append one record durably (exclusive lock, flush, fsync) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _write_record(handle, record)
    return record


def _write_record(handle: IO[str], record: dict[str, Any]) -> None:
    """Write at the end of a locked file; a torn last line first gets its newline back."""
    handle.seek(0, os.SEEK_END)
    if handle.tell() > 0:
        handle.seek(handle.tell() - 1)
        if handle.read(1) != "\n":
            handle.write("\n")
    handle.write(json.dumps(record, default=str) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def ledger_path(ledger_dir: Path, project: str) -> Path:
    return ledger_dir / f"{project}.jsonl"


def append_entry(ledger_dir: Path, project: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (``at`` is added when missing) and return it."""
    record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    return append_jsonl(ledger_path(ledger_dir, project), record)


def append_if_absent(
    ledger_dir: Path,
    project: str,
    entry: dict[str, Any],
    exists: Callable[[dict[str, Any]], bool],
) -> dict[str, Any] | None:
    """Append ``entry`` unless an existing entry satisfies ``exists``; atomic under the file lock.

    Returns the appended record, or ``None`` when a matching entry was already there.
    """
    return append_unless(
        ledger_dir, project, entry, lambda entries: any(exists(e) for e in entries)
    )


def append_unless(
    ledger_dir: Path,
    project: str,
    entry: dict[str, Any],
    blocked: Callable[[list[dict[str, Any]]], bool],
) -> dict[str, Any] | None:
    """Append ``entry`` unless ``blocked(all entries)``; atomic under the file lock.

    Returns the appended record, or ``None`` when blocked.
    """
    path = ledger_path(ledger_dir, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        entries = parse_jsonl(handle.read().splitlines(), path)
        if blocked(entries):
            return None
        record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
        _write_record(handle, record)
        return record


def read_entries(ledger_dir: Path, project: str) -> list[dict[str, Any]]:
    """All entries, oldest first (empty when the project has no history yet)."""
    return read_jsonl(ledger_path(ledger_dir, project))


@contextmanager
def promotion_lock(
    home: Path, name: str, timeout: float = PROMOTION_LOCK_TIMEOUT_SECONDS
) -> Iterator[None]:
    """Serialise alias moves of one model on this LOOPML_HOME (an exclusive file lock).

    Writers on other machines sharing a tracking server are not covered by a local file: they
    are covered by the compare-and-set in the gate (the champion is re-read under this lock
    just before the move, see ``tasks.registry.apply_gate``).
    """
    path = home / "locks" / f"promote-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"another loopml process has held the promotion lock of {name!r} for "
                        f"over {timeout:.0f} s ({path}); nothing was promoted"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def previous_champion(entries: list[dict[str, Any]], current: str) -> str | None:
    """The champion before ``current``: walks back over earlier rollbacks too."""
    # Collapse the history to a stack: a rollback pops the version it rolled back from.
    stack: list[str] = []
    for entry in entries:
        action = entry.get("action")
        if action == "promoted" and (not stack or stack[-1] != str(entry["version"])):
            stack.append(str(entry["version"]))
        elif action == "rolled_back" and stack:
            stack.pop()
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None
