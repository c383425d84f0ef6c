"""First commands of a fresh home at once: one creates the SQLite MLflow store, none fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

# Each child pays its imports, says so, then waits for the common start: the store is opened by
# all of them as close together as processes can be, which made MLflow's migrations collide.
CHILD = """
import sys, time
from pathlib import Path
from loopml.registry import ensure_experiment, mlflow_client
uri, ready, go, name = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
print(ensure_experiment(mlflow_client(uri), name, None))
"""


@pytest.mark.slow
def test_first_commands_at_once_create_one_store_and_each_its_experiment(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    uri, go = f"sqlite:///{home / 'mlflow.db'}", tmp_path / "go"
    names = ["alpha", "beta", "beta", "gamma"]  # two of them create the same experiment
    ready = [tmp_path / f"ready-{index}" for index in range(len(names))]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, str(flag), str(go), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag, name in zip(ready, names, strict=True)
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [child.communicate(timeout=120) for child in children]
    for child, (_, stderr) in zip(children, results, strict=True):
        assert child.returncode == 0, stderr[-3000:]
    ids = [stdout.strip() for stdout, _ in results]
    assert ids[1] == ids[2] and len(set(ids)) == 3
