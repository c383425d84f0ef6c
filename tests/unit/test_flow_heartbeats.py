"""A command's flow run does not wait for Prefect's heartbeat thread at its end."""

from __future__ import annotations

from prefect import flow
from prefect.flow_engine import FlowRunEngine

from loopml.cli.common import without_flow_heartbeats


@flow
def _nothing() -> None:
    return None


def test_a_commands_flow_run_sends_no_heartbeats_and_other_runs_keep_them():
    engine = FlowRunEngine(flow=_nothing)
    assert engine.heartbeat_seconds is not None  # Prefect's default: a thread per flow run

    with without_flow_heartbeats():
        assert engine.heartbeat_seconds is None  # no thread, nothing to join at the end

    assert engine.heartbeat_seconds is not None  # deployment runs keep theirs
