"""Estimates and realised values per batch, side by side (``estimates.jsonl``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EstimateStore:
    """Per project ``estimates.jsonl``: one line per estimate and per realised value, by batch.

    Lines are appended (``kind`` ``estimated`` or ``realised``); :meth:`pairs` joins them, the
    latest of each kind per batch winning. Unreadable lines (a torn write) are skipped.
    """

    def __init__(self, monitoring_dir: Path, project: str) -> None:
        self.path = monitoring_dir / project / "estimates.jsonl"

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def estimated_batches(self) -> set[str]:
        return {r["batch_id"] for r in self.records() if r.get("kind") == "estimated"}

    def pairs(self) -> list[dict[str, Any]]:
        """Per batch (in order of first estimate): the estimate with its realised value."""
        joined: dict[str, dict[str, Any]] = {}
        for record in self.records():
            batch = record.get("batch_id")
            if record.get("kind") == "estimated":
                joined.setdefault(batch, {}).update(
                    batch_id=batch,
                    model_version=record.get("model_version"),
                    metric=record.get("metric"),
                    method=record.get("method"),
                    estimated=record.get("value"),
                    lower=record.get("lower"),
                    upper=record.get("upper"),
                    estimated_at=record.get("at"),
                )
            elif record.get("kind") == "realised" and batch in joined:
                value = (record.get("metrics") or {}).get(joined[batch]["metric"])
                joined[batch].update(realised=value, labelled_rows=record.get("rows"))
        for pair in joined.values():
            realised, low, high = pair.get("realised"), pair.get("lower"), pair.get("upper")
            pair["within_interval"] = (
                None if realised is None or low is None else bool(low <= realised <= high)
            )
        return list(joined.values())


def estimate_record(batch_id: str, model_version: str, verdict: dict[str, Any], at: str) -> dict:
    """The store's line for a batch's estimate of the verdict's metric."""
    entry = verdict["estimates"].get(verdict["metric"]) or {}
    return {
        "kind": "estimated",
        "batch_id": batch_id,
        "model_version": model_version,
        "metric": verdict["metric"],
        "method": verdict["method"],
        "value": entry.get("value"),
        "lower": entry.get("lower"),
        "upper": entry.get("upper"),
        "at": at,
    }


def realised_record(batch_id: str, metrics: dict[str, float], rows: int, at: str) -> dict:
    """The store's line for a batch's realised metrics once its labels arrived."""
    return {"kind": "realised", "batch_id": batch_id, "metrics": metrics, "rows": rows, "at": at}
