"""The promotion history: an append-only JSON-lines ledger per project under LOOPML_HOME.

Every alias move and every gate decision lands here, so ``loopml status`` can show why the
champion is what it is. Appends take an exclusive file lock, so concurrent flows do not interleave.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def ledger_path(ledger_dir: Path, project: str) -> Path:
    return ledger_dir / f"{project}.jsonl"


def append_entry(ledger_dir: Path, project: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one entry (``at`` is added when missing) and return it."""
    record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    path = ledger_path(ledger_dir, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(record, default=str) + "\n")
    return record


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
        entries = [json.loads(line) for line in handle if line.strip()]
        if blocked(entries):
            return None
        record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
        handle.write(json.dumps(record, default=str) + "\n")
        return record


def read_entries(ledger_dir: Path, project: str) -> list[dict[str, Any]]:
    """All entries, oldest first (empty when the project has no history yet)."""
    path = ledger_path(ledger_dir, project)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


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
