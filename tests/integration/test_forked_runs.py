"""A run started the way Prefect's runner starts one, after ``use_forkserver``, is a fork of
the fork server with its preloaded modules (loopml/cli/stack/forkserver.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from prefect import flow

from loopml.cli.stack import forkserver


@flow(name="where-am-i")
def where_am_i(out: str) -> None:
    Path(out).write_text(
        json.dumps(
            {"parent": os.getppid(), "preloaded": "loopml.demo" in sys.modules, "pid": os.getpid()}
        )
    )


def test_a_run_started_like_the_runner_starts_one_is_a_fork_with_the_imports_done(
    prefect_api, monkeypatch, tmp_path
):
    """``run_flow_in_subprocess``, as the runner calls it, after ``use_forkserver``."""
    from prefect import flow_engine

    monkeypatch.delenv(forkserver.VARIABLE, raising=False)
    monkeypatch.setattr(flow_engine, "multiprocessing", flow_engine.multiprocessing)  # restored
    # A module this flow never imports: present in the run only if the fork server loaded it.
    assert forkserver.use_forkserver(["loopml.demo"]) is None

    out = tmp_path / "where.json"
    process = flow_engine.run_flow_in_subprocess(where_am_i, parameters={"out": str(out)})
    process.join(120)

    assert process.exitcode == 0
    seen = json.loads(out.read_text())
    assert seen["pid"] == process.pid
    assert seen["parent"] != os.getpid()  # the fork server's child, not a process we spawned
    assert seen["preloaded"] is True


@flow(name="sleeper")
def sleeper(started: str) -> None:
    Path(started).write_text("started")
    time.sleep(120)


def test_a_forked_run_stops_when_the_runner_kills_its_pid(prefect_api, monkeypatch, tmp_path):
    """Cancel in the Prefect UI: the runner signals the run's pid, the forked process ends."""
    from prefect import flow_engine

    monkeypatch.delenv(forkserver.VARIABLE, raising=False)
    monkeypatch.setattr(flow_engine, "multiprocessing", flow_engine.multiprocessing)  # restored
    assert forkserver.use_forkserver(["loopml.demo"]) is None
    started = tmp_path / "started"
    process = flow_engine.run_flow_in_subprocess(sleeper, parameters={"started": str(started)})
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.exists()

    os.kill(process.pid, signal.SIGTERM)
    process.join(30)

    assert process.exitcode not in (None, 0)
