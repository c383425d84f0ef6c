"""The ``loopml`` command line.

Every command takes ``--json``: the last stdout line is then one JSON object with the result.
Errors are one line on stderr and a non-zero exit; set ``LOOPML_DEBUG=1`` for tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.errors import LoopmlError

app = typer.Typer(
    name="loopml",
    help="Workflow-orchestrated MLOps for tabular data (Prefect, MLflow, GX, Evidently).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON line.")]
ProjectDir = Annotated[
    Path,
    typer.Option(
        "--project-dir",
        help="Folder holding configs/ and expectations/ (default: the current directory).",
    ),
]
EXIT_FAILURE = 1
EXIT_GATE = 2


def _fail(message: str, code: int = EXIT_FAILURE) -> None:
    first_line = " ".join(str(message).split("\n")).strip()
    typer.echo(f"loopml: error: {first_line}", err=True)
    raise typer.Exit(code)


def _run(
    action: Callable[[], dict[str, Any]],
    json_output: bool,
    render: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run one command: one clear error line instead of a traceback; JSON or text output."""
    try:
        result = action()
    except LoopmlError as exc:
        if os.environ.get("LOOPML_DEBUG"):
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the user gets a sentence, LOOPML_DEBUG the traceback
        if os.environ.get("LOOPML_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc}")
    if json_output:
        typer.echo(json.dumps(result, default=str))
    elif render is not None:
        render(result)
    else:
        for key, value in result.items():
            typer.echo(f"{key}: {value}")
    return result


def _settings():
    """Settings from the environment, applied to this process before Prefect is imported."""
    from loopml.runtime import configure_process
    from loopml.settings import load_settings

    settings = load_settings()
    configure_process(settings)
    return settings


def _call_flow(flow_reference: str, /, **parameters: Any) -> Any:
    """Run a flow (``"module:flow"``) in this process with the task runner the settings ask for."""
    import importlib

    settings = _settings()
    from flows.runner import with_runner

    module_name, flow_name = flow_reference.split(":")
    flow = getattr(importlib.import_module(module_name), flow_name)
    _console_without_tracebacks()
    return with_runner(flow, settings)(**parameters)


class _NoRunErrors:
    """A console log filter: a failed run's ERROR records (with tracebacks) stay in the Prefect
    UI; on the console the user gets loopml's own one-line reason instead. Prefect's notice
    that its event queue is still draining at exit is dropped too (the events are sent)."""

    def filter(self, record: Any) -> bool:
        if record.levelno >= 40:  # ERROR and above
            return False
        return not str(record.msg).startswith("Still processing items")


def _console_without_tracebacks() -> None:
    """Keep run errors off the console (the Prefect UI keeps them); ``LOOPML_DEBUG`` shows them."""
    if os.environ.get("LOOPML_DEBUG"):
        return
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(existing, _NoRunErrors) for existing in handler.filters
            ):
                handler.addFilter(_NoRunErrors())


def _resolve(path: Path | None) -> str | None:
    return None if path is None else str(path.expanduser().resolve())


@app.command()
def init(
    data: Annotated[
        str | None, typer.Argument(help="CSV or Parquet file (or a SQL query with --db).")
    ] = None,
    *,
    target: Annotated[str, typer.Option("--target", help="The column to predict.")],
    name: Annotated[str | None, typer.Option(help="Project name (default: the file name).")] = None,
    task: Annotated[
        str | None, typer.Option(help="classification or regression (default: inferred).")
    ] = None,
    positive_label: Annotated[
        str | None, typer.Option("--positive-label", help="Positive class of a binary target.")
    ] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Row id column.")] = None,
    time_column: Annotated[
        str | None, typer.Option("--time-column", help="Event time column (time-ordered split).")
    ] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="SQLAlchemy URL: DATA is then a SQL query.")
    ] = None,
    sql: Annotated[
        str | None, typer.Option("--sql", help="A SQL query to read (with --db), instead of DATA.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing config and suite.")] = False,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Profile DATA and write configs/NAME.yaml and the suggested suite expectations/NAME.json."""
    from loopml.project import initialise_project

    if sql is not None and data is not None:
        _fail("give either DATA or --sql QUERY, not both")
    if sql is not None and db is None:
        _fail("--sql needs --db URL (an SQLAlchemy database URL)")
    source = sql if sql is not None else data
    if source is None:
        _fail("give DATA (a CSV or Parquet file) or --sql QUERY --db URL")

    def action() -> dict[str, Any]:
        return initialise_project(
            source,
            target=target,
            name=name,
            task=task,
            positive_label=positive_label,
            id_column=id_column,
            time_column=time_column,
            sql_url=db,
            project_dir=project_dir.resolve(),
            force=force,
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(f"project {result['name']}: {result['task']} on target {result['target']!r}")
        if result.get("positive_label") is not None:
            typer.echo(f"  positive label: {result['positive_label']!r}")
        for kind in ("numeric", "categorical"):
            columns = result[kind]
            listed = ", ".join(columns) if columns else "none"
            typer.echo(f"  {kind} features ({len(columns)}): {listed}")
        for column, reason in result["excluded"].items():
            typer.echo(f"  excluded {column!r}: {reason}")
        for note in result["notes"]:
            if not note.startswith("excluded "):  # said just above
                typer.echo(f"  note: {note}")
        typer.echo(f"wrote {result['config']}")
        typer.echo(f"wrote {result['suite']} ({result['expectations']} expectations): review it")

    _run(action, json_output, render)


@app.command()
def validate(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="The batch to validate.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Validate a batch with the project's suite; a failing batch is quarantined."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.validation:validate_flow",
            project=name,
            data=_resolve(data),
            project_dir=str(project_dir.resolve()),
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(
            f"batch {result['batch_id']} ({result['rows']} rows): passed all "
            f"{result['evaluated']} expectations"
        )
        if result.get("data_docs"):
            typer.echo(f"  Data Docs: {result['data_docs']}")

    _run(action, json_output, render)


@app.command()
def train(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Training table (default: the config's).")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Search trials (default: config).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Search time budget in seconds (default: config).")
    ] = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Validate, search, evaluate, register a new version and run the promotion gate."""
    if trials is not None and trials < 1:
        _fail("--trials must be at least 1")
    if timeout is not None and timeout <= 0:
        _fail("--timeout must be positive")

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.training:train_flow",
            project=name,
            project_dir=str(project_dir.resolve()),
            data=_resolve(data),
            trials=trials,
            timeout=timeout,
        )

    def render(result: dict[str, Any]) -> None:
        verdict = "promoted to champion" if result["promoted"] else "kept as challenger"
        typer.echo(
            f"{name} v{result['version']} ({result['family']}, "
            f"{result['trials']} trials): {verdict}"
        )
        typer.echo(f"  {result['reason']}")
        for metric, value in sorted(result["test_metrics"].items()):
            typer.echo(f"  test {metric}: {value:.4f}")
        typer.echo(f"  MLflow run {result['run_id']}")

    _run(action, json_output, render)


@app.command()
def score(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="The batch to score (CSV or Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write predictions (CSV/Parquet).")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Score a batch with models:/NAME@champion; predictions are logged for monitoring."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.scoring:score_flow",
            project=name,
            data=_resolve(data),
            out=_resolve(out),
            project_dir=str(project_dir.resolve()),
        )

    def render(result: dict[str, Any]) -> None:
        logged = "logged for monitoring" if result["logged"] else "already in the prediction log"
        typer.echo(
            f"batch {result['batch_id']}: {result['rows']} rows scored by "
            f"{name} v{result['model_version']} -> {result['out']} ({logged})"
        )

    _run(action, json_output, render)


@app.command()
def monitor(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="The batch to check (CSV or Parquet).")],
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference", help="Reference table (default: the champion's training data)."
        ),
    ] = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Evidently drift (and performance when labels exist) of a batch; emits events."""

    def action() -> dict[str, Any]:
        result = _call_flow(
            "flows.monitoring:monitor_flow",
            project=name,
            data=_resolve(data),
            reference=_resolve(reference),
            project_dir=str(project_dir.resolve()),
        )
        return {key: result[key] for key in MONITOR_KEYS if key in result}

    def render(result: dict[str, Any]) -> None:
        verdict = "DRIFT DETECTED" if result["drift_detected"] else f"no drift ({result['status']})"
        typer.echo(f"batch {result['batch_id']} ({result['rows']} rows): {verdict}")
        typer.echo(f"  drift share {result['drift_share']:.2f}")
        for column in result["drifted_columns"]:
            score = result["drifted_column_scores"].get(column)
            typer.echo(
                f"  drifted: {column} (score {score:.3f})"
                if score is not None
                else f"  drifted: {column}"
            )
        typer.echo(f"  prediction drift: {result['prediction_drift'].get('drifted')}")
        performance = result.get("performance")
        if performance:
            typer.echo("  performance: " + _performance_line(performance))
        typer.echo(f"  report: {result['report_path']}")

    _run(action, json_output, render)


MONITOR_KEYS = (
    "project",
    "batch_id",
    "checked_at",
    "model_version",
    "rows",
    "status",
    "drift_detected",
    "drift_share",
    "weighted_drift_share",
    "drifted_columns",
    "drifted_column_scores",
    "prediction_drift",
    "performance",
    "performance_degraded",
    "report_path",
)


@app.command()
def label(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="Row id + target table.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Join late ground truth (row id + target) to the logged predictions."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.labels:label_flow",
            project=name,
            data=_resolve(data),
            project_dir=str(project_dir.resolve()),
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(f"{name}: {result['labels']} labels stored ({result['labels_id']})")
        for version, entry in sorted(result["performance_by_version"].items()):
            typer.echo(f"  v{version} on {entry['rows']} labelled rows: {_metrics(entry)}")
        verdict = result.get("champion_verdict")
        if verdict:
            typer.echo("  champion: " + _performance_line(verdict))

    _run(action, json_output, render)


def _metrics(entry: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted((entry.get("metrics") or {}).items()))


def _performance_line(verdict: dict[str, Any]) -> str:
    """E.g. ``rmse 12.0000 vs 10.0000 held-out on 300 rows: DEGRADED (drop 20%, max 15%)``."""
    metric = verdict["metric"]
    current = (verdict.get("current") or {}).get(metric)
    reference = (verdict.get("reference") or {}).get(metric)
    if verdict.get("drop") is None or current is None or reference is None:
        return verdict.get("note") or "no verdict"
    relative = verdict.get("drop_units") == "fraction of champion"
    rounded = round(verdict["drop"], 4) + 0.0  # no "-0.0000"
    drop = f"{rounded:.0%}" if relative else f"{rounded:.4f}"
    bound = f"{verdict['max_drop']:.0%}" if relative else f"{verdict['max_drop']:g}"
    state = "DEGRADED" if verdict["degraded"] else "ok"
    if not verdict["degraded"] and verdict["drop"] > verdict["max_drop"]:
        state = f"ok, within the sampling noise of {verdict['rows']} rows"
    return (
        f"{metric} {current:.4f} vs {reference:.4f} held-out on {verdict['rows']} rows: "
        f"{state} (drop {drop}, max {bound})"
    )


@app.command()
def retrain(
    name: Annotated[str, typer.Argument(help="Project name.")],
    batch_id: Annotated[
        str | None, typer.Option("--batch-id", help="The batch that triggered this retraining.")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Search trials (default: config).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Search time budget, seconds.")] = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Retrain on reference + recent labelled data; promote the challenger only if better."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.retraining:retrain_flow",
            project=name,
            project_dir=str(project_dir.resolve()),
            batch_id=batch_id,
            trials=trials,
            timeout=timeout,
        )

    def render(result: dict[str, Any]) -> None:
        if result.get("skipped"):
            typer.echo(f"{name}: retraining skipped: {result['reason']}")
            return
        verdict = "promoted to champion" if result["promoted"] else "kept as challenger"
        held_back = result["recent_evaluation_rows"]
        learned = result["recent_training_rows"]
        left_out = result["recent_window_rows"] - held_back - learned
        typer.echo(f"{name} v{result['version']} ({result['family']}): {verdict}")
        typer.echo(
            f"  trained on {result['training_rows']} rows ({result['training_rows'] - learned} "
            f"reference + {learned} recent labelled); {held_back} recent rows held back to judge"
            + (f"; {left_out} copies of judged rows left out" if left_out else "")
        )
        typer.echo(f"  {result['reason']}")
        for comparison, values in (result.get("comparisons") or {}).items():
            champion = values.get("champion")
            typer.echo(
                f"  {comparison}: challenger {values['candidate']:.4f} vs champion "
                + ("-" if champion is None else f"{champion:.4f}")
            )
        typer.echo(f"  MLflow run {result['run_id']}")

    _run(action, json_output, render)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Project name.")],
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "manual promotion",
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Make VERSION the champion (recorded in the promotion history)."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.registry:promote_flow",
            project=name,
            version=version,
            reason=reason,
            project_dir=str(project_dir.resolve()),
        )

    _run(action, json_output, _render_alias_move)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Project name.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Give the champion alias back to the previous champion."""

    def action() -> dict[str, Any]:
        return _call_flow(
            "flows.registry:rollback_flow", project=name, project_dir=str(project_dir.resolve())
        )

    _run(action, json_output, _render_alias_move)


def _render_alias_move(entry: dict[str, Any]) -> None:
    previous = entry.get("previous_champion")
    was = f" (was v{previous})" if previous else ""
    typer.echo(f"champion -> v{entry['version']}{was}: {entry.get('reason')}")


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="Project name.")],
    history: Annotated[int, typer.Option(help="How many history entries to show.")] = 10,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Champion, challenger, last monitoring verdict and promotion history."""
    from loopml.project import project_status

    def action() -> dict[str, Any]:
        settings = _settings()
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
            typer.echo(
                f"last monitoring: {monitoring.get('checked_at')} "
                f"batch {monitoring.get('batch_id')}"
                f" drift={monitoring.get('drift_detected')} share={monitoring.get('drift_share')}"
                f" degraded={monitoring.get('performance_degraded')}"
            )
        else:
            typer.echo("last monitoring: none")
        typer.echo("history:")
        for entry in result["history"]:
            typer.echo("  " + _history_line(entry))

    _run(action, json_output, render)


def _history_line(entry: dict[str, Any]) -> str:
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
    return " ".join(parts)


def _register_extensions() -> None:
    from loopml.cli_demo import register as register_demo
    from loopml.cli_stack import register as register_stack

    register_stack(app)
    register_demo(app)


_register_extensions()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:
        sys.stderr.close()


if __name__ == "__main__":
    main()
