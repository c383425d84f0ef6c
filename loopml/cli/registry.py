"""Registry commands: ``promote``, ``rollback`` and ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import (
    JsonFlag,
    ProjectDir,
    checked_project,
    run,
)


def promote(
    name: Annotated[str, typer.Argument(help="Project name.")],
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual promotion",
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Make VERSION the champion (recorded in the promotion history)."""

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir, version=version)
        from flows.registry import promote_flow

        return project.run_flow(promote_flow, version=version, reason=reason)

    run(action, json_output, render_alias_move)


def rollback(
    name: Annotated[str, typer.Argument(help="Project name.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Give the champion alias back to the previous champion."""

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir)
        from flows.registry import rollback_flow

        return project.run_flow(rollback_flow)

    run(action, json_output, render_alias_move)


def render_alias_move(entry: dict[str, Any]) -> None:
    previous = entry.get("previous_champion")
    was = f" (was v{previous})" if previous else ""
    typer.echo(f"champion -> v{entry['version']}{was}: {entry.get('reason')}")


def status(
    name: Annotated[str, typer.Argument(help="Project name.")],
    history: Annotated[int, typer.Option(help="How many history entries to show.")] = 10,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Champion, challenger, last monitoring verdict and promotion history."""
    from loopml.status import project_status

    def action() -> dict[str, Any]:
        from loopml.settings import load_settings

        # Reads only: no Prefect, no MLflow import on the embedded default (see loopml.status).
        return project_status(name, project_dir.resolve(), load_settings(), history=history)

    def render(result: dict[str, Any]) -> None:
        for line in status_lines(result):
            typer.echo(line)

    run(action, json_output, render)


def status_lines(result: dict[str, Any]) -> list[str]:
    """``loopml status`` as text: aliases, last monitoring, estimates, inbox, quarantine,
    history (numbers rounded; ``--json`` keeps them whole)."""
    from loopml.estimation_view import estimation_status_lines

    lines = []
    for alias in ("champion", "challenger"):
        entry = result[alias]
        if entry is None:
            lines.append(f"{alias}: none")
        else:
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(entry["metrics"].items()))
            lines.append(f"{alias}: v{entry['version']} ({entry.get('family')}) {metrics}")
    monitoring = result.get("last_monitoring")
    if monitoring:
        lines.append(
            f"last monitoring: {monitoring.get('checked_at')} "
            f"batch {monitoring.get('batch_id')}"
            f" drift={monitoring.get('drift_detected')}"
            f" share={_number(monitoring.get('drift_share'))}"
            f" degraded={monitoring.get('performance_degraded')}"
        )
        if monitoring.get("reason"):
            lines.append(f"  rule: {monitoring['reason']}")
    else:
        lines.append("last monitoring: none")
    lines += estimation_status_lines(result)
    lines += inbox_lines(result.get("inbox"), result.get("quarantine"))
    lines.append("history:")
    lines += ["  " + history_line(entry) for entry in result["history"]]
    return lines


def inbox_lines(inbox: dict[str, Any] | None, quarantine: dict[str, Any] | None) -> list[str]:
    """The inbox (waiting, failed, last processed) and the quarantine, a few lines."""
    from loopml.inbox import outcome_line

    lines = []
    if inbox is not None:
        lines.append(
            f"inbox: {inbox['waiting']} file(s) waiting, {inbox['failed']} failed, "
            f"{inbox['quarantined']} quarantined ({inbox['inbox_dir']})"
        )
        last = inbox.get("last")
        if last:
            lines.append(f"  last: {last.get('at')} " + outcome_line(last))
    if quarantine is not None:
        lines.append(
            f"quarantine: {quarantine['batches']} batch(es) ({quarantine['quarantine_dir']})"
        )
        for entry in quarantine["latest"]:
            reason = f": {entry['reason']}" if entry.get("reason") else ""
            lines.append(f"  {entry['at']} batch {entry['batch_id']}{reason}")
    return lines


def _number(value: Any) -> str:
    """A share or score for a person: two decimals, ``n/a`` when missing."""
    return "n/a" if value is None else f"{value:.2f}"


def history_line(entry: dict[str, Any]) -> str:
    """One promotion-history entry as a line: when, what, which version, why, what triggered it."""
    trigger = entry.get("trigger") or {}
    parts = [str(entry.get("at")), str(entry.get("action"))]
    if entry.get("version") is not None:
        parts.append(f"v{entry['version']}")
    if trigger.get("kind"):
        cause = trigger.get("event") or trigger["kind"]
        batch_id = trigger.get("batch_id") or entry.get("batch_id")
        parts.append(f"[{cause}, batch {batch_id}]" if batch_id else f"[{cause}]")
    if entry.get("reason"):
        parts.append(str(entry["reason"]))
    policy = entry.get("data_policy") if entry.get("action") != "registered" else None
    if policy:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in (policy.get("scores") or {}).items())
        rows = policy.get("backtest_rows")
        parts.append(
            f"[data: {policy['policy']}"
            + (f"; backtest {policy.get('metric')} on {rows} rows: {scores}" if scores else "")
            + "]"
        )
    return " ".join(parts)
