"""A fresh LOOPML_HOME and a small Telco project, set up as a user would with the console script.

Shared by the benchmarks that time or measure the CLI and the stack from outside.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loopml.data import bundled_sample_path

BIN = Path(sys.executable).parent
LOOPML = str(BIN / "loopml")


def scratch(prefix: str) -> tuple[Path, Path, Path]:
    """A new temporary folder and, inside it, the paths of a home and a project folder."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    return root, root / "home", root / "project"


def cli_environment(home: Path) -> dict[str, str]:
    """This environment for ``loopml`` commands on ``home``: no server or store of the caller's,
    any free port for the local Prefect server, one thread."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI"}
    }
    env.update({"LOOPML_HOME": str(home), "LOOPML_SERVER_PORT": "0", "OMP_NUM_THREADS": "1"})
    return env


def run(command: list[str], cwd: Path, env: dict[str, str], expect: int = 0) -> None:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if completed.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr}")


def init_small_project(project_dir: Path, name: str, env: dict[str, str]) -> None:
    """``loopml init`` on the bundled Telco sample; the search cut to 2 logistic trials."""
    project_dir.mkdir(parents=True, exist_ok=True)
    init = [LOOPML, "init", str(bundled_sample_path()), "--target", "churn", "--name", name]
    run([*init, "--positive-label", "Yes"], project_dir, env)
    config_path = project_dir / "configs" / f"{name}.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["search"].update({"families": ["logistic"], "trials": 2})
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def wait_for_warm_process(home: Path, timeout: float = 300.0) -> int:
    """The pid of ``home``'s warm process, once its ``warm.json`` is written (the first command
    on the local server starts it when it is done)."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while not (home / "warm.json").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no warm process; see {home / 'logs' / 'warm.log'}")
        time.sleep(0.2)
    return int(json.loads((home / "warm.json").read_text())["pid"])
