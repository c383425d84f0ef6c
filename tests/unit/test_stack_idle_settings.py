"""What keeps an idle ``loopml up`` quiet: the runner's poll interval and the Prefect server's
service loops (benchmarks/idle_cpu_benchmark.py measures the effect)."""

from __future__ import annotations

import pytest

from loopml.cli.stack.servers import QUIET_SERVICE_SECONDS, prefect_server_environment
from loopml.cli.stack.supervisor import RUNNER_POLL_SECONDS, runner_poll_seconds
from loopml.credentials import load_or_create_credentials
from loopml.errors import StackError
from loopml.settings import load_settings


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, RUNNER_POLL_SECONDS), ("", RUNNER_POLL_SECONDS), ("1", 1)]
)
def test_runner_poll_seconds_default_and_override(value, seconds) -> None:
    environ = {} if value is None else {"LOOPML_RUNNER_POLL_SECONDS": value}
    assert runner_poll_seconds(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-2", "0.5", "fast"])
def test_a_bad_runner_poll_is_one_clear_error(value) -> None:
    with pytest.raises(StackError, match="LOOPML_RUNNER_POLL_SECONDS must be a whole number"):
        runner_poll_seconds({"LOOPML_RUNNER_POLL_SECONDS": value})


def test_the_prefect_server_runs_its_services_less_often_unless_the_user_says(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("LOOPML_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS", "7")
    settings = load_settings()
    env = prefect_server_environment(settings, 4321, load_or_create_credentials(tmp_path))

    assert env["PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS"] == "7"  # the user's value
    for name, seconds in QUIET_SERVICE_SECONDS.items():
        if name != "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS":
            assert env[name] == seconds, name
    # Events and task runs still reach the UI and the API within seconds.
    assert "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL" not in QUIET_SERVICE_SECONDS


def test_each_quiet_interval_is_a_setting_prefect_reads(monkeypatch) -> None:
    """A misspelt variable would be ignored without a word: Prefect must parse each one."""
    from prefect.settings import Settings

    for name, seconds in QUIET_SERVICE_SECONDS.items():
        monkeypatch.setenv(name, seconds)
    services = Settings().server.services
    read = {
        "LATE_RUNS_LOOP": services.late_runs.loop_seconds,
        "PAUSE_EXPIRATIONS_LOOP": services.pause_expirations.loop_seconds,
        "REPOSSESSOR_LOOP": services.repossessor.loop_seconds,
        "FOREMAN_LOOP": services.foreman.loop_seconds,
        "CANCELLATION_CLEANUP_LOOP": services.cancellation_cleanup.loop_seconds,
        "CLEANUP_RECONCILER_LOOP": services.cleanup_reconciler.loop_seconds,
        "SCHEDULER_RECENT_DEPLOYMENTS_LOOP": services.scheduler.recent_deployments_loop_seconds,
    }
    for key, value in read.items():
        assert value == float(QUIET_SERVICE_SECONDS[f"PREFECT_SERVER_SERVICES_{key}_SECONDS"]), key
