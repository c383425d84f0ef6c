"""Event -> retraining latency through the real stack (``loopml up`` internals).

Starts the embedded stack (Prefect server, runner serving the deployments, automations) on a
fresh LOOPML_HOME for a freshly initialised Telco project, emits ``loopml.drift.detected`` for
it, and measures from the emit to (a) the retrain flow run being CREATED by the automation and
(b) that run being picked up by the runner (its start time). The retrain itself may then fail
(no champion is trained here): only the latency of the loop's trigger is measured.

    .venv/bin/python benchmarks/event_latency_benchmark.py [--events 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3, help="events, one after another")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="loopml-latency-"))
    os.environ["LOOPML_HOME"] = str(scratch / "home")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from loopml.cli.stack import deployments, supervisor
    from loopml.data import bundled_sample_path
    from loopml.project import initialise_project
    from loopml.runtime import configure_process
    from loopml.settings import load_settings
    from tests.conftest import free_port

    settings = load_settings()
    configure_process(settings)
    project_dir = scratch / "project"
    initialise_project(
        str(bundled_sample_path()),
        target="churn",
        name="latency",
        task=None,
        positive_label=None,
        id_column=None,
        time_column=None,
        sql_url=None,
        project_dir=project_dir,
    )
    running = supervisor.Stack(
        settings=settings,
        project_dir=project_dir,
        configs=deployments.discover_projects(project_dir, ["latency"]),
        ports=supervisor.StackPorts(free_port(), free_port(), free_port()),
        progress=lambda message: print(message, flush=True),
    )
    record = running.start()
    try:
        created, started = [], []
        for _ in range(args.events):
            to_created, to_started = asyncio.run(one_event(record["prefect_api_url"]))
            created.append(to_created)
            started.append(to_started)
            print(f"event -> run created {to_created:5.2f} s, -> run started {to_started:5.2f} s")
            time.sleep(
                5
            )  # past nothing: each event has its own batch id, the cooldown is per burst
    finally:
        running.stop()
    print(
        f"median over {args.events}: event -> retrain run created "
        f"{statistics.median(created):.2f} s, -> started {statistics.median(started):.2f} s "
        f"(runner poll {supervisor.runner_poll_seconds()} s)"
    )


async def one_event(api_url: str) -> tuple[float, float]:
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from loopml.events import DRIFT_DETECTED, project_resource

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        batch_id = f"latency-{uuid.uuid4().hex[:8]}"
        emitted_at = datetime.now(UTC)
        emit_event(
            event=DRIFT_DETECTED,
            resource=project_resource("latency"),
            payload={"batch_id": batch_id, "drift_share": 1.0, "drifted_columns": []},
        )
        clock = time.monotonic()
        to_created = to_started = None
        async with get_client() as client:
            while time.monotonic() - clock < 180 and to_started is None:
                runs = await client.read_flow_runs(limit=50)
                for run in runs:
                    if (run.parameters or {}).get("batch_id") != batch_id:
                        continue
                    if to_created is None:
                        to_created = (run.created - emitted_at).total_seconds()
                    if run.start_time is not None:
                        to_started = (run.start_time - emitted_at).total_seconds()
                await asyncio.sleep(0.2)
        if to_created is None or to_started is None:
            raise TimeoutError("the automation did not start a retrain run within 180 s")
        return to_created, to_started


if __name__ == "__main__":
    main()
