"""First commands of a fresh home at once: one of them creates each SQLite store (MLflow's,
Optuna's), and none fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

# Each child pays its imports, says so, then waits for the common start: the store is opened by
# all of them as close together as processes can be, which made the libraries' table creation
# collide ("No such index ...", "table ... already exists").
START = """
import sys, time
from pathlib import Path
{imports}
uri, ready, go, name = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.002)
"""
MLFLOW = START.format(imports="from loopml.registry import ensure_experiment, mlflow_client") + (
    "print(ensure_experiment(mlflow_client(uri), name, None))\n"
)
OPTUNA = START.format(imports="import optuna\nfrom loopml.search.study import open_storage") + (
    "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
    "study = optuna.create_study(storage=open_storage(uri), study_name=name, load_if_exists=True)\n"
    "study.optimize(lambda trial: trial.suggest_float('x', 0, 1), n_trials=2)\n"
    "print(study._study_id)\n"
)


def _at_once(child: str, uri: str, names: list[str], tmp_path: Path) -> list[str]:
    """Run ``child`` once per name, all started together; their outputs."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{index}" for index in range(len(names))]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", child, uri, str(flag), str(go), name],
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
    return [stdout.strip() for stdout, _ in results]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("store", "child"), [("mlflow", MLFLOW), ("optuna", OPTUNA)], ids=["mlflow", "optuna"]
)
def test_first_commands_at_once_create_the_store_once(store, child, tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / f'{store}.db'}"
    # Two of them ask for the same experiment (study): both get the one that was created.
    ids = _at_once(child, uri, ["alpha", "beta", "beta", "gamma"], tmp_path)
    assert ids[1] == ids[2] and len(set(ids)) == 3
