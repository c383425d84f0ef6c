"""Text lines for estimated performance and the stream detector (``monitor`` and ``status``)."""

from __future__ import annotations

from typing import Any


def estimation_lines(result: dict[str, Any]) -> list[str]:
    """E.g. ``estimated roc_auc 0.8123 [0.7810, 0.8420] (cbpe): ok`` and the stream verdict."""
    lines = []
    estimated = result.get("estimated_performance") or {}
    metric = estimated.get("metric")
    entry = (estimated.get("estimates") or {}).get(metric) or {}
    if entry.get("value") is not None:
        interval = ""
        if entry.get("lower") is not None:
            interval = f" [{entry['lower']:.4f}, {entry['upper']:.4f}]"
        state = "DEGRADED (confident)" if estimated.get("degraded") else "ok"
        lines.append(
            f"estimated {metric} {entry['value']:.4f}{interval} ({estimated['method']}): {state}"
        )
    elif estimated.get("note"):
        lines.append(f"estimated performance: {estimated['note']}")
    stream = result.get("stream")
    if stream:
        state = "ALARM: " + ", ".join(stream["alarmed_streams"]) if stream["alarm"] else "quiet"
        lines.append(
            f"stream: {state} ({stream['batches']} batches, threshold {stream['threshold']:.2f})"
        )
    return lines


def estimation_status_lines(status: dict[str, Any]) -> list[str]:
    """Estimated vs realised per batch, then the stream detector's state."""
    lines = []
    pairs = status.get("estimated_vs_realised") or []
    if pairs:
        lines.append("estimated vs realised:")
    for pair in pairs:
        estimated = pair.get("estimated")
        realised = pair.get("realised")
        interval = (
            f" [{pair['lower']:.4f}, {pair['upper']:.4f}]" if pair.get("lower") is not None else ""
        )
        shown = "-" if estimated is None else f"{estimated:.4f}{interval}"
        known = "no labels yet" if realised is None else f"realised {realised:.4f}"
        lines.append(
            f"  batch {pair['batch_id']} v{pair.get('model_version')} {pair.get('metric')}: "
            f"estimated {shown}, {known}"
        )
    stream = status.get("stream")
    if stream:
        largest = max((stream.get("sums") or {}).values(), default=0.0)
        last = stream.get("last_alarm") or {}
        lines.append(
            f"stream: {stream.get('batches')} batches since restart, largest CUSUM {largest:.2f}, "
            f"{stream.get('alarms')} alarm(s)"
            + (f", last at batch {last['batch_id']}" if last else "")
        )
    return lines
