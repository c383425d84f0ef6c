"""``loopml demo`` end to end, with the time of each phase and of each deployment run.

Runs the README's command (``loopml demo --json``) in a fresh LOOPML_HOME on free ports and
prints, from its progress lines and the Prefect database it leaves behind:

- the wall time and the phases: project ready, stack up, first champion, each batch from drop
  to verdict, each retraining from verdict to decision, the summary, the stop;
- each deployment run (4 inbox, 2 retrain): how long its process took to start (the run's
  Pending -> Running: the runner's process start and the flow's imports) and to run;
- with ``--imports``, what a fresh interpreter pays to import what each kind of run needs
  (the cost every run paid before runs were forked from the runner's fork server), and the
  machine's load average before and after (the machine may be shared: compare back to back).

    .venv/bin/python benchmarks/demo_benchmark.py [--repeats 1] [--imports]
    LOOPML_RUNNER_FORKSERVER=0 .venv/bin/python benchmarks/demo_benchmark.py   # runs spawned
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROGRESS = re.compile(r"^\s*(\d+\.\d)s (.*)$")
# Phase boundaries: (label, the progress line that ends it).
MARKS = [
    ("history table ready", "[demo] project"),
    ("init the project, stack up", "automations:"),
    ("first champion", "[demo] champion v1"),
]
# What a run of each kind imports in a fresh interpreter (the flow and what it calls lazily).
RUN_IMPORTS = {
    "inbox": [
        "flows.inbox", "flows.scoring", "flows.monitoring", "great_expectations", "evidently",
        "mlflow.pyfunc", "mlflow.store.tracking.sqlalchemy_store", "skops.io",
    ],
    "retrain": [
        "flows.retraining", "great_expectations", "evidently", "mlflow.sklearn",
        "mlflow.store.tracking.sqlalchemy_store", "skops.io", "optuna", "fairlearn.metrics",
        "matplotlib.pyplot",
    ],
}  # fmt: skip


def run_demo(home: Path) -> dict:
    """One ``loopml demo --json`` in ``home``; its wall time, progress lines and result."""
    from tests.conftest import free_port

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
    }
    env["LOOPML_HOME"] = str(home)
    home.mkdir(parents=True)
    ports = [str(free_port()) for _ in range(3)]
    load_before = os.getloadavg()
    started = time.monotonic()
    completed = subprocess.run(
        [
            str(BIN / "loopml"), "demo", "--json",
            "--prefect-port", ports[0], "--mlflow-port", ports[1], "--evidently-port", ports[2],
        ],
        cwd=home, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    wall = time.monotonic() - started
    if completed.returncode != 0:
        raise SystemExit(f"loopml demo failed: {completed.stderr[-3000:]}")
    lines = []
    for line in completed.stderr.splitlines():
        match = PROGRESS.match(line)
        if match:
            lines.append((float(match.group(1)), match.group(2)))
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "wall": wall,
        "lines": lines,
        "result": result,
        "load": (load_before, os.getloadavg()),
    }


def phases(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """Seconds of each phase, from the demo's own elapsed-time progress lines."""
    found: list[tuple[str, float]] = []
    previous = 0.0
    for label, text in MARKS:
        at = next((t for t, line in lines if text in line), None)
        if at is not None:
            found.append((label, at - previous))
            previous = at
    dropped: tuple[str, float] = ("", 0.0)
    for at, line in lines:
        if line.startswith("[demo] dropped"):
            dropped = (line.split()[2], at)
        elif "verdict:" in line:
            found.append((f"{dropped[0]}: drop -> verdict", at - dropped[1]))
            previous = at
        elif line.startswith("[demo]   retraining ->"):
            version = line.split()[3].rstrip(":")
            found.append((f"  retraining {version}: verdict -> decision", at - previous))
            previous = at
    stops = [(t, float(line.rsplit(" ", 2)[-2])) for t, line in lines if "stopped in" in line]
    if stops:
        stop_began = stops[0][0] - stops[0][1]
        found.append(("last decision -> stop (runs end, recovery, summary)", stop_began - previous))
        found.append(("stop the stack", stops[-1][0] - stop_began))
    return found


def deployment_runs(home: Path) -> list[dict]:
    """Each deployment run: kind, Pending -> Running (process start), Running -> end."""
    database = sqlite3.connect(home / "prefect" / "prefect.db")
    runs = database.execute(
        "SELECT flow_run.id, flow.name FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
        "WHERE flow_run.deployment_id IS NOT NULL AND flow_run.parent_task_run_id IS NULL "
        "ORDER BY flow_run.created"
    ).fetchall()
    found = []
    for run_id, name in runs:
        states = dict(
            database.execute(
                "SELECT type, timestamp FROM flow_run_state WHERE flow_run_id = ? "
                "ORDER BY timestamp",
                (run_id,),
            ).fetchall()
        )
        when = {key: datetime.fromisoformat(value) for key, value in states.items()}
        if {"PENDING", "RUNNING", "COMPLETED"} <= set(when):
            found.append(
                {
                    "kind": name,
                    "created_to_pending": (
                        when["PENDING"] - when.get("SCHEDULED", when["PENDING"])
                    ).total_seconds(),
                    "process_start": (when["RUNNING"] - when["PENDING"]).total_seconds(),
                    "running": (when["COMPLETED"] - when["RUNNING"]).total_seconds(),
                }
            )
    return found


def import_seconds(modules: list[str]) -> float:
    """Wall seconds a fresh interpreter spends importing ``modules`` (median of 3)."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", f"import {', '.join(modules)}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
        )
        times.append(time.monotonic() - started)
    return sorted(times)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--imports", action="store_true", help="also time each kind of run's imports"
    )
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.path.insert(0, str(REPO))
    print(
        f"LOOPML_RUNNER_FORKSERVER={os.environ.get('LOOPML_RUNNER_FORKSERVER', '(unset)')}; "
        f"PYTHONPATH={os.environ.get('PYTHONPATH', '(unset)')}"
    )

    for repeat in range(args.repeats):
        scratch = Path(tempfile.mkdtemp(prefix="loopml-demo-"))
        try:
            measured = run_demo(scratch / "home")
            print(
                f"\nrun {repeat + 1}: loopml demo {measured['wall']:.1f} s wall "
                f"(the demo's own 'done in': {measured['result']['seconds']} s); load average "
                f"{measured['load'][0][0]:.2f} before, {measured['load'][1][0]:.2f} after"
            )
            for label, seconds in phases(measured["lines"]):
                print(f"  {label:<52} {seconds:6.1f} s")
            retrainings = [r["action"] for r in measured["result"]["retrainings"]]
            versions = [b["model_version"] for b in measured["result"]["batches"]]
            print(f"  story: retrainings {retrainings}, batches scored by v{versions}")
            print("  deployment runs (Prefect states): pending->running = process start")
            for run in deployment_runs(scratch / "home"):
                print(
                    f"    {run['kind']:<8} scheduled->pending {run['created_to_pending']:4.1f} s"
                    f"  pending->running {run['process_start']:4.1f} s"
                    f"  running {run['running']:5.1f} s"
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.imports:
        print("\nimports in a fresh interpreter (what each run paid when it was spawned):")
        from loopml.cli.stack.forkserver import PRELOAD

        measured_imports = {
            "prefect alone": ["prefect"],
            **{f"what a {kind} run imports": modules for kind, modules in RUN_IMPORTS.items()},
            "the fork server's preload (once per loopml up)": list(PRELOAD),
        }
        for label, modules in measured_imports.items():
            print(f"  {label:<48} {import_seconds(modules):5.1f} s")


if __name__ == "__main__":
    main()
