"""One local Prefect server per LOOPML_HOME: started by the first command that runs a flow,
reused by later ones, locked with the home's auth string, stopped by ``loopml down`` or when
idle; commands that only read (or fail on their input) answer without it.

Every command runs as a user runs it: a subprocess with a fresh LOOPML_HOME and no
PREFECT_API_URL. What happened is read back from ``server.json``, the processes and the real
Prefect API.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, SAMPLE, init_project

pytestmark = pytest.mark.timeout(900)  # a loaded 2-core machine: 5 min seen

SERVER_VARIABLES = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "LOOPML_SERVER_IDLE_MINUTES")


def _environment(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SERVER_VARIABLES}
    env.update({"LOOPML_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"})
    env["LOOPML_SERVER_PORT"] = "0"  # any free port: never the 4200 another session uses
    return {**env, **extra}


def _loopml(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "loopml"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _api(url: str, auth: str | None, body: dict | None = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(
        url, data=json.dumps(body or {}).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def _runs(api_url: str, auth: str) -> dict[str, tuple[str, str]]:
    """Every flow run: id -> (flow id, state type)."""
    status, runs = _api(f"{api_url}/flow_runs/filter", auth)
    assert status == 200
    return {run["id"]: (run["flow_id"], run["state_type"]) for run in runs}


@pytest.fixture
def project(tmp_path) -> tuple[Path, Path]:
    project_dir = tmp_path / "project"
    for name in ("local", "other"):
        init_project(SAMPLE, "churn", name, project_dir, positive_label="Yes")
    batch = tmp_path / "batch.csv"
    batch.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:201]))
    return project_dir, batch


def test_reads_and_input_errors_answer_without_starting_a_server(tmp_path, project) -> None:
    project_dir, _ = project
    home = tmp_path / "home"
    env = _environment(home)
    commands = [
        ("status", "local"),
        ("status", "ghost"),
        ("train", "ghost"),
        ("score", "local", "--data", "missing.csv", "--out", "out.csv"),
        ("promote", "local", "one"),
    ]
    processes = [_loopml(*command, cwd=project_dir, env=env) for command in commands]
    results = [_finish(process) for process in processes]

    assert results[0][0] == 0, results[0][2]
    assert "champion: none" in results[0][1]
    for (code, _, stderr), fragment in zip(
        results[1:],
        ["unknown project 'ghost'", "unknown project 'ghost'", "no such file", "version"],
        strict=True,
    ):
        assert code == 1
        assert stderr.strip().splitlines() == [stderr.strip()]  # one line
        assert fragment in stderr
    assert not (home / "server.json").exists()
    assert not (home / "logs" / "prefect-server.log").exists()  # no server was ever started


@pytest.fixture
def home(tmp_path) -> Iterator[Path]:
    """A fresh LOOPML_HOME whose local server (if a failed test left one) is stopped after."""
    home = tmp_path / "home"
    yield home
    subprocess.run([str(BIN / "loopml"), "down"], env=_environment(home), capture_output=True)


@pytest.mark.slow
def test_commands_share_one_server_that_down_and_idleness_stop(home, project) -> None:
    project_dir, batch = project
    env = _environment(home)

    # Two first commands of a fresh home at once (two projects: two MLflow experiments): one
    # server, one MLflow store.
    first = [
        _loopml("validate", name, "--data", str(batch), cwd=project_dir, env=env)
        for name in ("local", "other")
    ]
    for code, _, stderr in (_finish(process) for process in first):
        assert code == 0, stderr
    record = json.loads((home / "server.json").read_text())
    log = (home / "logs" / "prefect-server.log").read_text()
    assert log.count("loopml: Prefect server http") == 1, log[-2000:]
    assert _alive(record["pid"]) and _alive(record["server_pid"])
    for private in ("server.json", "credentials.json"):
        assert (home / private).stat().st_mode & 0o777 == 0o600
    auth = json.loads((home / "credentials.json").read_text())["prefect_auth_string"]

    # A later command reuses it: same processes, three runs recorded, all completed.
    code, _, stderr = _finish(
        _loopml("validate", "local", "--data", str(batch), cwd=project_dir, env=env)
    )
    assert code == 0, stderr
    assert json.loads((home / "server.json").read_text())["pid"] == record["pid"]
    assert log.count("loopml: Prefect server http") == 1
    runs = _runs(record["api_url"], auth)
    assert len(runs) == 3 and {state for _, state in runs.values()} == {"COMPLETED"}

    # Locked: no auth string, a wrong one, or a foreign page's origin get nothing.
    assert _api(f"{record['api_url']}/flow_runs/filter", None)[0] == 401
    assert _api(f"{record['api_url']}/flow_runs/filter", "loopml:guess")[0] == 401
    flow_id = next(iter(runs.values()))[0]
    planted_status, planted = _api(
        f"{record['api_url']}/flow_runs/",
        auth,
        {"flow_id": flow_id, "state": {"type": "RUNNING", "name": "Running"}},
    )
    assert planted_status == 201  # a run whose process will be gone when the server restarts
    assert _api(f"{record['api_url']}/flow_runs/", None, {"flow_id": flow_id})[0] == 401

    down = subprocess.run(
        [str(BIN / "loopml"), "down"], cwd=project_dir, env=env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    assert "stopped the local Prefect server" in down.stdout
    assert not (home / "server.json").exists()
    deadline = time.monotonic() + 30
    while _alive(record["server_pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(record["pid"]) and not _alive(record["server_pid"])

    # The next command starts a fresh server, which crashes the run left in flight, and stops
    # by itself once idle.
    idle_env = {**env, "LOOPML_SERVER_IDLE_MINUTES": "0.5"}
    restarted = _loopml("validate", "local", "--data", str(batch), cwd=project_dir, env=idle_env)
    while not (home / "server.json").exists() and restarted.poll() is None:
        time.sleep(0.2)
    second = json.loads((home / "server.json").read_text())  # read before it idles out
    code, _, stderr = _finish(restarted)
    assert code == 0, stderr
    assert second["pid"] != record["pid"]
    runs = _runs(second["api_url"], auth)
    assert runs[planted["id"]][1] == "CRASHED"
    assert sorted(state for _, state in runs.values()).count("COMPLETED") == 4
    deadline = time.monotonic() + 120
    while (home / "server.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert not (home / "server.json").exists(), "the idle server did not stop"
    # The record goes first, then the server is stopped, then the supervisor says why.
    server_log = home / "logs" / "prefect-server.log"
    deadline = time.monotonic() + 60
    while "Prefect server stopped (idle" not in server_log.read_text():
        assert time.monotonic() < deadline, server_log.read_text()[-1500:]
        time.sleep(0.5)
    assert "idle for 0.5 min" in server_log.read_text()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.slow
def test_later_commands_run_in_the_warm_process_as_they_would_alone(home, project) -> None:
    """The first command leaves a warm process; later ones run there (its log says so) with the
    same output, exit code and recorded flow run as in their own process; ``down`` stops it."""
    project_dir, batch = project
    env = _environment(home)
    code, first_out, stderr = _finish(
        _loopml("validate", "local", "--data", str(batch), cwd=project_dir, env=env)
    )
    assert code == 0, stderr
    warm_file, warm_log = home / "warm.json", home / "logs" / "warm.log"
    _wait_for(warm_file.exists, 180, f"the warm process ({warm_log})")
    warm = json.loads(warm_file.read_text())
    assert warm_file.stat().st_mode & 0o777 == 0o600 and _alive(warm["pid"])

    bad = project_dir / "bad.csv"
    bad.write_text(batch.read_text().replace(",Month-to-month,", ",Weekly,"))
    commands = [
        ("validate", "local", "--data", str(batch)),
        ("validate", "local", "--data", str(bad), "--json"),  # quarantined: exit 1
        ("validate", "local"),  # a usage error Typer reports
    ]
    alone_env = {**env, "LOOPML_WARM": "0"}
    for command in commands:
        warm_result = _finish(_loopml(*command, cwd=project_dir, env=env))
        alone_result = _finish(_loopml(*command, cwd=project_dir, env=alone_env))
        assert warm_result[0] == alone_result[0], (command, warm_result, alone_result)
        assert _comparable(warm_result[1]) == _comparable(alone_result[1]), command
        assert _comparable(warm_result[2]) == _comparable(alone_result[2]), command
    served = warm_log.read_text()
    # Started by a command of project "local", it looked for that project's champion to load.
    assert "loopml warm: local has no champion to load yet" in served, served
    assert served.count("loopml warm: validate local -> exit 0") == 1, served
    assert served.count("loopml warm: validate local -> exit 1") == 1, served
    assert served.count("loopml warm: validate local -> exit 2") == 1, served
    assert json.loads(warm_file.read_text())["pid"] == warm["pid"]  # one warm process

    # Every run is in the API, whichever process ran it: 1 + 2 + 2 validations.
    record = json.loads((home / "server.json").read_text())
    auth = json.loads((home / "credentials.json").read_text())["prefect_auth_string"]
    states = sorted(state for _, state in _runs(record["api_url"], auth).values())
    assert len(states) == 5 and states.count("COMPLETED") >= 3, states

    down = subprocess.run(
        [str(BIN / "loopml"), "down"], cwd=project_dir, env=env, capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    _wait_for(lambda: not _alive(warm["pid"]), 30, "the warm process to stop")
    assert not warm_file.exists()


def _comparable(text: str) -> str:
    """Output with what differs between any two runs (batch ids are not: same file) removed:
    run URLs, timestamps and durations."""
    import re

    text = re.sub(r"flow-run/[0-9a-f-]+", "flow-run/ID", text)
    text = re.sub(r"\d{8}T\d{6}", "STAMP", text)
    varying = "checked_at|validated_at|flow_run_id|run_id|quarantine_path|report_path|data_docs"
    text = re.sub(rf'"({varying})": "[^"]*"', r'"\1": "X"', text)
    return re.sub(r"\d+\.\d+ ?s\b", "N s", text)
