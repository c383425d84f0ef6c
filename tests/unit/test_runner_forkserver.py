"""The runner's deployment runs start as forks of a process with the flows imported.

loopml/cli/stack/forkserver.py points a Prefect internal (the start method inside
``prefect.flow_engine.run_flow_in_subprocess``) at a multiprocessing fork server. These tests
fail loudly when a Prefect upgrade changes what that relies on; tests/integration/
test_forked_runs.py runs a flow the way the runner starts one.
"""

from __future__ import annotations

import multiprocessing
import types

import pytest

from loopml.cli.stack import forkserver


def test_prefect_still_starts_served_runs_through_the_call_the_fork_server_replaces():
    """If this fails, Prefect changed how its runner starts a flow run: runs would silently
    go back to a fresh interpreter each (6-8 s of imports); see forkserver.py."""
    from prefect import flow_engine
    from prefect.runner import _starter_direct, runner

    assert forkserver.prefect_start_method_hook(flow_engine) is None
    # A runner given flow objects (add_flow) starts their runs with this very function.
    assert _starter_direct.run_flow_in_subprocess is flow_engine.run_flow_in_subprocess
    assert runner.DirectSubprocessStarter is _starter_direct.DirectSubprocessStarter


def test_a_changed_prefect_keeps_spawn_and_says_why():
    moved = types.ModuleType("flow_engine")
    assert "no longer imports multiprocessing" in forkserver.prefect_start_method_hook(moved)

    def run_flow_in_subprocess():  # a start method chosen some other way
        return multiprocessing.get_context("forkserver")

    moved.multiprocessing = multiprocessing
    moved.run_flow_in_subprocess = run_flow_in_subprocess
    assert "no longer calls" in forkserver.prefect_start_method_hook(moved)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", True), ("1", True), ("yes", True), ("0", False), ("off", False), (" False ", False)],
)
def test_the_fork_server_can_be_turned_off(value, expected):
    assert forkserver.enabled({forkserver.VARIABLE: value}) is expected


def test_turned_off_the_runner_keeps_prefects_spawn(monkeypatch):
    from prefect import flow_engine

    monkeypatch.setenv(forkserver.VARIABLE, "0")
    assert forkserver.use_forkserver(()) == f"{forkserver.VARIABLE} is off"
    assert flow_engine.multiprocessing is multiprocessing
