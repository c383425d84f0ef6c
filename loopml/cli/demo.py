"""``loopml demo``: the closed loop on the bundled Telco sample, end to end, with no human action.

init -> train a champion -> start the stack (``loopml up``) -> drop a stream of batches into the
inbox (clean, then drifting) -> the inbox flow scores and monitors each -> drift events start the
retrain deployment through the automation -> the challenger is gated and promoted -> scoring goes
on with the new champion. Progress is printed as it happens; a summary table ends it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from loopml.cli.common import JsonFlag, call_flow, process_settings, run

PROJECT = "telco"
WAIT_FOR_BATCH_SECONDS = 240
WAIT_FOR_RETRAIN_SECONDS = 420
DEMO_COOLDOWN_SECONDS = 15
# Files and the ledger are polled often: the demo should not idle after the stack answered.
POLL_SECONDS = 0.2


def demo(
    clean: Annotated[int, typer.Option(help="Clean batches before the drift starts.")] = 2,
    drifting: Annotated[int, typer.Option(help="Drifting batches.")] = 2,
    rows: Annotated[int, typer.Option(help="Rows per batch.")] = 500,
    trials: Annotated[int, typer.Option(help="Search trials per training.")] = 6,
    prefect_port: Annotated[int, typer.Option("--prefect-port")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port")] = 5000,
    evidently_port: Annotated[int, typer.Option("--evidently-port")] = 8000,
    keep_running: Annotated[
        bool,
        typer.Option(help="Keep the stack (and its UIs) up after the summary, until Ctrl-C."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the simulated stream.")] = 7,
    json_output: JsonFlag = False,
) -> None:
    """The whole closed loop on the bundled Telco churn sample, in minutes."""
    from loopml.cli.stack import deployments, supervisor

    began = time.monotonic()

    def progress(message: str) -> None:
        typer.echo(f"{time.monotonic() - began:6.1f}s {message}", err=True)

    def action() -> dict[str, Any]:
        settings = process_settings()
        project_dir = settings.home / "demo"
        started = time.monotonic()
        pool = prepare_project(project_dir, trials=trials, seed=seed, progress=progress)
        running = supervisor.Stack(
            settings=settings,
            project_dir=project_dir,
            configs=deployments.discover_projects(project_dir, [PROJECT]),
            ports=supervisor.StackPorts(prefect_port, mlflow_port, evidently_port),
            progress=progress,
            runner_poll=1,
        )
        record = running.start()
        try:
            result = run_loop(
                settings, project_dir, record, pool, clean, drifting, rows, seed, progress
            )
            # A retraining writes its decision before it finishes logging: let it finish.
            unfinished = running.wait_for_runs(["retrain", "score", "monitor"], timeout=120)
            if unfinished:
                progress(f"[demo] {unfinished} flow run(s) still running at the end")
            result["seconds"] = round(time.monotonic() - started, 1)
            result["urls"] = {
                key: record[key] for key in ("prefect_ui_url", "mlflow_url", "evidently_url")
            }
            print_summary(result, lambda line: typer.echo(line, err=True))
            if keep_running:
                progress("the stack stays up: Ctrl-C stops it")
                supervisor.run_until_stopped(running)
        finally:
            running.stop()
        return result

    run(action, json_output, lambda result: None)


def prepare_project(project_dir: Path, *, trials: int, seed: int, progress: Any) -> Any:
    """A fresh demo project: history table, config tuned for a quick loop, suggested suite."""
    import pandas as pd

    from loopml import demo as stream_data
    from loopml.config import ScheduleConfig, load_config, save_config
    from loopml.data import bundled_sample_path
    from loopml.project import initialise_project

    project_dir.mkdir(parents=True, exist_ok=True)
    history, pool = stream_data.split_history(
        pd.read_csv(bundled_sample_path()), history_share=0.6, seed=seed
    )
    history_path = project_dir / "data" / "history.csv"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(history_path, index=False)
    progress(f"[demo] project {PROJECT}: {len(history)} history rows in {history_path}")
    initialise_project(
        str(history_path),
        target=stream_data.TARGET,
        name=PROJECT,
        task=None,
        positive_label=None,
        id_column=None,
        time_column=None,
        sql_url=None,
        project_dir=project_dir,
        force=True,
    )
    config = load_config(PROJECT, project_dir)  # typed: each assignment below is validated
    config.search.trials, config.search.timeout_seconds = trials, 90
    config.schedules = ScheduleConfig(inbox_poll_seconds=1, monitor=None, retrain=None)
    # A short cooldown, so each drifting batch of the demo may start its own retraining.
    config.retraining.cooldown_seconds, config.retraining.window_rows = DEMO_COOLDOWN_SECONDS, 3000
    save_config(config, project_dir)
    return pool


def run_loop(
    settings: Any,
    project_dir: Path,
    record: dict[str, Any],
    pool: Any,
    clean: int,
    drifting: int,
    rows: int,
    seed: int,
    progress: Any,
) -> dict[str, Any]:
    """Train the first champion, then feed the stream and follow what the stack does with it."""
    from flows.training import train_flow
    from loopml import demo as stream_data
    from loopml import ledger
    from loopml.cli.stack.inbox_watch import SETTLE_SECONDS

    progress("[demo] training the first champion...")
    trained = call_flow(train_flow, settings, project=PROJECT, project_dir=str(project_dir))
    progress(
        f"[demo] champion v{trained['version']} ({trained['family']}): "
        f"roc_auc {trained['test_metrics'].get('roc_auc', float('nan')):.3f}"
    )
    inbox = settings.inbox_dir / PROJECT
    inbox.mkdir(parents=True, exist_ok=True)
    history_file = settings.monitoring_dir / PROJECT / "history.jsonl"
    summary: list[dict[str, Any]] = []
    retrainings: list[dict[str, Any]] = []
    drifted: list[Any] = []
    for number, (kind, batch) in enumerate(
        stream_data.stream(pool, clean=clean, drifting=drifting, rows=rows, seed=seed), start=1
    ):
        name = f"batch-{number:02d}-{kind}.csv"
        staging = inbox / f".{name}.part"
        batch.to_csv(staging, index=False)
        staging.rename(inbox / name)
        # Written whole, then renamed: complete at once, so it need not wait out the inbox's
        # settle time (meant for files still being copied in) before it is taken.
        settled = time.time() - SETTLE_SECONDS
        os.utime(inbox / name, (settled, settled))
        progress(f"[demo] dropped {name} ({len(batch)} rows) into the inbox")
        if kind == "drifting":
            drifted.append(batch)
        verdict = wait_for_verdict(history_file, len(summary), WAIT_FOR_BATCH_SECONDS)
        row = {
            "batch": name,
            "kind": kind,
            "drift": verdict.get("drift_detected"),
            "drift_share": verdict.get("drift_share"),
            "drifted_columns": len(verdict.get("drifted_columns", [])),
            "roc_auc": ((verdict.get("performance") or {}).get("current") or {}).get("roc_auc"),
            "degraded": verdict.get("performance_degraded"),
            "model_version": verdict.get("model_version"),
            "batch_id": verdict.get("batch_id"),
        }
        summary.append(row)
        progress(
            f"[demo]   verdict: {'DRIFT' if row['drift'] else 'no drift'} "
            f"(share {row['drift_share']:.2f}), degraded={row['degraded']}, "
            f"scored by v{row['model_version']}"
        )
        if row["drift"] or row["degraded"]:
            progress("[demo]   waiting for the automation's retraining...")
            decision = wait_for_decision(
                settings.ledger_dir, PROJECT, row["batch_id"], WAIT_FOR_RETRAIN_SECONDS, ledger
            )
            retrainings.append(decision)
            progress(f"[demo]   {_retraining_line(decision)}")
    return {
        "project": PROJECT,
        "champion_v1": trained,
        "batches": summary,
        "retrainings": retrainings,
        "recovery": measure_recovery(project_dir, pool, drifted, seed),
    }


def measure_recovery(project_dir: Path, pool: Any, drifted: list[Any], seed: int) -> dict:
    """Stale (v1), final champion and oracle error on fresh rows of the drifted traffic."""
    import numpy as np
    import pandas as pd

    from loopml import demo as stream_data
    from loopml.comparison import load_scorer
    from loopml.recovery import oracle_error, recovery, scorer_error
    from loopml.registry import CHAMPION, version_by_alias
    from loopml.runtime import open_runtime

    if not drifted:
        return {}
    runtime = open_runtime(PROJECT, project_dir)
    config = runtime.config
    rng = np.random.default_rng(seed + 1)
    # Drawn like the batches, so the fresh rows have their mix.
    fresh = pd.concat(
        [stream_data.drifting_batch(pool, len(drifted[0]), rng, 1.0) for _ in range(3)],
        ignore_index=True,
    )
    champion = str(version_by_alias(runtime.mlflow, PROJECT, CHAMPION).version)
    history = pd.read_csv(project_dir / "data" / "history.csv")
    figures = {
        "champion": champion,
        "stale": scorer_error(load_scorer(runtime.mlflow, PROJECT, "1", config), fresh, config),
        "loop": scorer_error(load_scorer(runtime.mlflow, PROJECT, champion, config), fresh, config),
        "oracle": oracle_error(config, pd.concat(drifted, ignore_index=True), history, fresh),
        "metric": config.gate_metric,
        "rows": len(fresh),
    }
    figures["recovery"] = recovery(figures["stale"], figures["loop"], figures["oracle"])
    return figures


def wait_for_verdict(history_file: Path, seen: int, timeout: float) -> dict[str, Any]:
    """The next monitoring verdict appended by the inbox flow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history_file.is_file():
            lines = [line for line in history_file.read_text().splitlines() if line.strip()]
            if len(lines) > seen:
                return json.loads(lines[seen])
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"no monitoring verdict within {timeout:.0f} s (see the Prefect UI)")


def wait_for_decision(
    ledger_dir: Path, project: str, batch_id: str, timeout: float, ledger: Any
) -> dict[str, Any]:
    """The gate decision of the retraining triggered by ``batch_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in reversed(ledger.read_entries(ledger_dir, project)):
            trigger = entry.get("trigger") or {}
            if (
                entry.get("action") in {"promoted", "refused"}
                and trigger.get("batch_id") == batch_id
            ):
                return entry
        time.sleep(POLL_SECONDS)
    return {"action": "no retraining seen", "reason": f"waited {timeout:.0f} s", "version": None}


def print_summary(result: dict[str, Any], echo: Any) -> None:
    """The closing table: one line per batch, one per retraining, the time and the URLs."""
    lines = [
        "",
        "batch                      kind      drift  share  cols  roc_auc  degraded  model",
    ]
    for row in result["batches"]:
        roc = "-" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
        lines.append(
            f"{row['batch']:<26} {row['kind']:<9} {str(row['drift']):<6} "
            f"{row['drift_share']:.2f}   {row['drifted_columns']:<4}  {roc:<7}  "
            f"{str(row['degraded']):<8}  v{row['model_version']}"
        )
    lines.append("")
    for decision in result["retrainings"]:
        lines.append(_retraining_line(decision))
    measured = result.get("recovery") or {}
    if measured:
        lines.append(
            f"recovery against the oracle: {measured['recovery']:.2f} (error = 1 - "
            f"{measured['metric']} on {measured['rows']} fresh drifted rows: stale v1 "
            f"{measured['stale']:.3f}, champion v{measured['champion']} {measured['loop']:.3f}, "
            f"oracle {measured['oracle']:.3f})"
        )
    lines.append(f"done in {result['seconds']} s")
    for label, url in result["urls"].items():
        lines.append(f"  {label:<16} {url}")
    for line in lines:
        echo(line)


def _retraining_line(decision: dict[str, Any]) -> str:
    """``retraining -> vN: <reason>``; the gate's reason already starts with its action."""
    action, reason = str(decision.get("action")), str(decision.get("reason"))
    said = reason if reason.startswith(f"{action}:") else f"{action}: {reason}"
    return f"retraining -> v{decision.get('version')}: {said}"
