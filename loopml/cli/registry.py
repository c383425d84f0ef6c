"""Registry commands: ``promote``, ``rollback`` and ``status``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import (
    JsonFlag,
    ProjectDir,
    checked_project,
    process_settings,
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
    from loopml.estimation_view import estimation_status_lines
    from loopml.project import project_status

    def action() -> dict[str, Any]:
        settings = process_settings()
        return project_status(name, project_dir.resolve(), settings, history=history)

    def render(result: dict[str, Any]) -> None:
        for alias in ("champion", "challenger"):
            entry = result[alias]
            if entry is None:
                typer.echo(f"{alias}: none")
            else:
                metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(entry["metrics"].items()))
                typer.echo(f"{alias}: v{entry['version']} ({entry.get('family')}) {metrics}")
        monitoring = result.get("last_monitoring")
        if monitoring:
            share = monitoring.get("drift_share")
            share_text = "n/a" if share is None else f"{share:.2f}"
            typer.echo(
                f"last monitoring: {monitoring.get('checked_at')} "
                f"batch {monitoring.get('batch_id')}"
                f" drift={monitoring.get('drift_detected')} share={share_text}"
                f" degraded={monitoring.get('performance_degraded')}"
            )
            if monitoring.get("reason"):
                typer.echo(f"  rule: {monitoring['reason']}")
        else:
            typer.echo("last monitoring: none")
        for line in estimation_status_lines(result):
            typer.echo(line)
        typer.echo("history:")
        for entry in result["history"]:
            typer.echo("  " + history_line(entry))

    run(action, json_output, render)


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
