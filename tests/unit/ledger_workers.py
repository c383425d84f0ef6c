"""Process targets for the ledger concurrency tests: a light module, so that the processes
(started clean by ``forkserver``, not forked from a pytest process full of server threads)
import little before they race."""

from __future__ import annotations

from pathlib import Path

from loopml import ledger


def _claim(ledger_dir: str, worker: int, barrier, results) -> None:
    barrier.wait()  # every process tries at the same moment
    record = ledger.append_if_absent(
        Path(ledger_dir),
        "churn",
        {"action": "retrain-claimed", "batch_id": "b1", "worker": worker},
        lambda entry: entry.get("batch_id") == "b1",
    )
    results.put((worker, record is not None))


def _append_many(ledger_dir: str, worker: int, count: int, barrier) -> None:
    barrier.wait()
    for index in range(count):
        # Long lines: a torn write would show as a line that does not parse.
        ledger.append_entry(
            Path(ledger_dir), "churn", {"worker": worker, "index": index, "pad": "x" * 2000}
        )
