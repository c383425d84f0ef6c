"""Project commands: init, validate, train, score, monitor, label and retrain.

Each runs one flow in this process: ``checked_project`` applies the settings and checks the
inputs (a typo answers without a server), then the flow is imported and run with
``CheckedProject.run_flow``, so ``loopml --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import (
    JsonFlag,
    ProjectDir,
    checked_project,
    fail,
    resolve_path,
    run,
)


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
        fail("give either DATA or --sql QUERY, not both")
    if sql is not None and db is None:
        fail("--sql needs --db URL (an SQLAlchemy database URL)")
    source = sql if sql is not None else data
    if source is None:
        fail("give DATA (a CSV or Parquet file) or --sql QUERY --db URL")

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

    run(action, json_output, render)


def validate(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="The batch to validate.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Validate a batch with the project's suite; a failing batch is quarantined."""

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir, (data,))
        from flows.validation import validate_flow

        return project.run_flow(
            validate_flow,
            data=resolve_path(data),
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(
            f"batch {result['batch_id']} ({result['rows']} rows): passed all "
            f"{result['evaluated']} expectations"
        )
        if result.get("data_docs"):
            typer.echo(f"  Data Docs: {result['data_docs']}")

    run(action, json_output, render)


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
        fail("--trials must be at least 1")
    if timeout is not None and timeout <= 0:
        fail("--timeout must be positive")

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir, (data,))
        from flows.training import train_flow

        return project.run_flow(
            train_flow,
            data=resolve_path(data),
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

    run(action, json_output, render)


def score(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="The batch to score (CSV or Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write predictions (CSV/Parquet).")],
    reasons: Annotated[
        int | None,
        typer.Option(
            "--reasons",
            help="Add each row's K strongest reasons (columns and signed contributions, "
            "as loopml explain computes them).",
            metavar="K",
        ),
    ] = None,
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Score a batch with models:/NAME@champion; predictions are logged for monitoring."""
    if reasons is not None and reasons < 1:
        fail(f"--reasons must be at least 1 (got {reasons})")

    def action() -> dict[str, Any]:
        from loopml.data import check_output_path

        check_output_path(out)  # before any server starts or any row is validated
        project = checked_project(name, project_dir, (data,))
        from flows.scoring import score_flow

        return project.run_flow(
            score_flow,
            data=resolve_path(data),
            out=resolve_path(out),
            reasons=reasons,
        )

    def render(result: dict[str, Any]) -> None:
        logged = "logged for monitoring" if result["logged"] else "already in the prediction log"
        explained = "" if result["reasons"] is None else f", {result['reasons']} reasons per row"
        typer.echo(
            f"batch {result['batch_id']}: {result['rows']} rows scored by "
            f"{name} v{result['model_version']}{explained} -> {result['out']} ({logged})"
        )

    run(action, json_output, render)


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
    from loopml.estimation_view import estimation_lines

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir, (data, reference))
        from flows.monitoring import monitor_flow

        result = project.run_flow(
            monitor_flow,
            data=resolve_path(data),
            reference=resolve_path(reference),
        )
        return {
            key: value
            for key, value in result.items()
            if key in MONITOR_KEYS or key.startswith("estimated") or key == "stream"
        }

    def render(result: dict[str, Any]) -> None:
        verdict = "DRIFT DETECTED" if result["drift_detected"] else f"no drift ({result['status']})"
        typer.echo(f"batch {result['batch_id']} ({result['rows']} rows): {verdict}")
        if result.get("reason"):
            typer.echo(f"  rule: {result['reason']}")
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
            typer.echo("  performance: " + performance_line(performance))
        for line in estimation_lines(result):
            typer.echo("  " + line)
        typer.echo(f"  report: {result['report_path']}")
        for page, url in (result.get("links") or {}).items():
            typer.echo(f"  {page}: {url}")

    run(action, json_output, render)


MONITOR_KEYS = (
    "project",
    "batch_id",
    "checked_at",
    "model_version",
    "rows",
    "status",
    "reason",
    "drift_detected",
    "drift_share",
    "weighted_drift_share",
    "drifted_columns",
    "drifted_column_scores",
    "prediction_drift",
    "performance",
    "performance_degraded",
    "report_path",
    "links",
)


def label(
    name: Annotated[str, typer.Argument(help="Project name.")],
    data: Annotated[Path, typer.Option("--data", help="Row id + target table.")],
    project_dir: ProjectDir = Path("."),
    json_output: JsonFlag = False,
) -> None:
    """Join late ground truth (row id + target) to the logged predictions."""

    def action() -> dict[str, Any]:
        project = checked_project(name, project_dir, (data,))
        from flows.labels import label_flow

        return project.run_flow(
            label_flow,
            data=resolve_path(data),
        )

    def render(result: dict[str, Any]) -> None:
        typer.echo(f"{name}: {result['labels']} labels stored ({result['labels_id']})")
        for version, entry in sorted(result["performance_by_version"].items()):
            typer.echo(f"  v{version} on {entry['rows']} labelled rows: {_metrics(entry)}")
        verdict = result.get("champion_verdict")
        if verdict:
            typer.echo("  champion: " + performance_line(verdict))

    run(action, json_output, render)


def _metrics(entry: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted((entry.get("metrics") or {}).items()))


def performance_line(verdict: dict[str, Any]) -> str:
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
        project = checked_project(name, project_dir)
        from flows.retraining import retrain_flow

        return project.run_flow(
            retrain_flow,
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

    run(action, json_output, render)
