"""How long a user waits for a command, as they run it (the console script, a fresh process).

In a fresh LOOPML_HOME with no PREFECT_API_URL: ``loopml train`` (2 logistic trials) makes a
champion and starts the home's local Prefect server (its first-start cost is printed); then,
with the server up, each command is timed (median of ``--repeats`` runs):

- ``loopml status NAME`` and ``loopml status ghost`` (an unknown project's error): target
  <= 1.0 s; neither needs Prefect;
- ``loopml score`` of 200 rows vs a bare Python that loads ``models:/NAME@champion`` with
  ``mlflow.pyfunc`` and predicts the same rows: target <= 1.5x;
- ``loopml monitor`` of 500 rows: target <= 3 s.

score and monitor are timed twice: run by the home's warm process (``loopml.cli.warm``, the
default once the first command has started it) and each in its own process (``LOOPML_WARM=0``).
Ratios are taken in one run. ``loopml down`` stops the server (and the warm process) at the end.

    .venv/bin/python benchmarks/command_latency_benchmark.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from loopml.data import bundled_sample_path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli_project import (  # noqa: E402
    LOOPML,
    cli_environment,
    init_small_project,
    scratch,
    wait_for_warm_process,
)

PROJECT = "latency"
BARE_SCRIPT = """
import sys
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model("models:/{name}@champion")
frame = pd.read_csv(sys.argv[1])
model.predict(frame.drop(columns=["churn"]))
"""


def timed(command: list[str], cwd: Path, env: dict[str, str], expect: int = 0) -> float:
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {completed.returncode}: {completed.stderr}")
    return seconds


def median_of(repeats: int, command: list[str], cwd: Path, env: dict[str, str], **kw) -> float:
    return statistics.median(timed(command, cwd, env, **kw) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    root, home, project_dir = scratch("loopml-latency-")
    env, loopml = cli_environment(home), LOOPML

    init_small_project(project_dir, PROJECT, env)
    frame = pd.read_csv(bundled_sample_path())
    score_rows, monitor_rows = root / "score_200.csv", root / "monitor_500.csv"
    frame.sample(200, random_state=1).to_csv(score_rows, index=False)
    frame.sample(500, random_state=2).to_csv(monitor_rows, index=False)

    try:
        first = timed([loopml, "train", PROJECT], project_dir, env)
        server = json.loads((home / "server.json").read_text())
        print(f"first command (train, starts the local server): {first:.1f} s")
        started = time.perf_counter()
        wait_for_warm_process(home)
        print(f"warm process ready {time.perf_counter() - started:.1f} s after it")

        figures = {
            "status": median_of(args.repeats, [loopml, "status", PROJECT], project_dir, env),
            "unknown_project": median_of(
                args.repeats, [loopml, "status", "ghost"], project_dir, env, expect=1
            ),
        }
        scored = root / "scored.csv"
        score = [loopml, "score", PROJECT, "--data", str(score_rows), "--out", str(scored)]
        figures["score_200"] = median_of(args.repeats, score, project_dir, env)
        bare = [sys.executable, "-c", BARE_SCRIPT.format(name=PROJECT), str(score_rows)]
        bare_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
        figures["bare_score_200"] = median_of(args.repeats, bare, project_dir, bare_env)
        monitor = [loopml, "monitor", PROJECT, "--data", str(monitor_rows)]
        figures["monitor_500"] = median_of(args.repeats, monitor, project_dir, env)
        alone = {**env, "LOOPML_WARM": "0"}
        figures["score_200_alone"] = median_of(args.repeats, score, project_dir, alone)
        figures["monitor_500_alone"] = median_of(args.repeats, monitor, project_dir, alone)
        served = (home / "logs" / "warm.log").read_text().count("loopml warm: ")
        same_server = json.loads((home / "server.json").read_text())["pid"] == server["pid"]
    finally:
        subprocess.run([loopml, "down"], cwd=project_dir, env=env, capture_output=True)

    ratio = figures["score_200"] / figures["bare_score_200"]
    print(f"loopml status {PROJECT}:        {figures['status']:.2f} s (target <= 1.0 s)")
    print(f"unknown project's error:      {figures['unknown_project']:.2f} s (target <= 1.0 s)")
    print(
        f"loopml score, 200 rows:       {figures['score_200']:.2f} s vs bare "
        f"{figures['bare_score_200']:.2f} s = {ratio:.2f}x (target <= 1.5x)"
    )
    print(f"loopml monitor, 500 rows:     {figures['monitor_500']:.2f} s (target <= 3 s)")
    print(
        f"each in its own process (LOOPML_WARM=0): score {figures['score_200_alone']:.2f} s "
        f"= {figures['score_200_alone'] / figures['bare_score_200']:.2f}x bare, "
        f"monitor {figures['monitor_500_alone']:.2f} s"
    )
    print(f"one server for every command: {same_server}; warm process log lines: {served}")
    print(json.dumps({**figures, "score_ratio": ratio, "first_command": first}))


if __name__ == "__main__":
    main()
