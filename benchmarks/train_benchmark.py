"""What loopml's orchestration costs on top of the training work itself.

Times ``loopml train NAME --trials N`` against ``python benchmarks/bare_train.py --trials N``
(the same split, families, ranges, folds and pruner in plain pandas + scikit-learn + Optuna) on
the same table, and prints both wall times and their ratio (targets: <= 1.5 x bare at 12 trials,
<= 1.15 x at 60).

What is and is not counted:

- Both sides are timed the same way: a subprocess, wall clock from launch to exit, so Python
  start-up and imports count on both sides (loopml's are heavier: Prefect, MLflow, GX).
- The Prefect server is NOT counted. By default loopml runs as a user's commands do: the home's
  local server and its warm process (``loopml.cli.warm``) are started by a first command before
  timing, so ``loopml train`` runs in the warm process (imports already paid). ``--cold`` starts
  a plain server instead and sets ``PREFECT_API_URL``, so every ``loopml train`` is a fresh
  process paying its imports (as does the bare script); a ``PREFECT_API_URL`` already set is
  used likewise.
- ``loopml init`` (profiling, suggested suite) is NOT counted: it is a one-off per project.
- loopml does more than the bare script, and that is counted: GX validation, out-of-fold scores
  for the decision threshold, evaluation figures, permutation importances, MLflow logging and
  registration, the champion comparison (from the second run on) and Prefect task bookkeeping.
  The per-task breakdown read back from the Prefect API shows where the time went.

Runs alternate (loopml, bare, loopml, bare, ...) so a busy machine slows both alike; ``--repeats``
runs each side that many times and the medians are compared. ``--threads`` sets
``OMP_NUM_THREADS`` for both sides (on a shared machine oversubscribed OpenMP threads can make
HistGradientBoosting many times slower, which would drown the comparison).

Usage::

    python benchmarks/train_benchmark.py --trials 12,48 [--data FILE --target COL] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT = "bench"
TARGET_RATIO = 1.15
# Issue 15's targets per trial budget (a small search carries the fixed cost over few trials).
BUDGET_TARGETS = {12: 1.5, 60: 1.15}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prefect_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """A ``prefect server start`` on a free loopback port; returns it, its API URL and how long
    it took to answer ``/api/health``."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    server_env = {**env, "PREFECT_HOME": str(home)}
    server_env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    with open(home / "server.log", "w") as log:  # the server keeps its own copy of the handle
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                return process, api_url, time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise TimeoutError("prefect server did not answer within 300 s")


def benchmark_environment(home: Path) -> dict[str, str]:
    """This process's environment with loopml's state in ``home`` and telemetry off."""
    env = {
        **os.environ,
        "LOOPML_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "LOOPML_OPTUNA_STORAGE"):
        env.pop(variable, None)  # everything in the benchmark's own LOOPML_HOME
    return env


def prefect_api(workdir: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """Use ``PREFECT_API_URL`` when set, else start a server (not counted) and set it in
    ``env``; returns the started server, to be stopped by the caller."""
    if env.get("PREFECT_API_URL"):
        print(f"Prefect API: {env['PREFECT_API_URL']} (PREFECT_API_URL)")
        return None
    server, api_url, startup = start_prefect_server(workdir / "prefect-server", env)
    env["PREFECT_API_URL"] = api_url
    print(f"Prefect server started in {startup:.1f} s at {api_url} (not counted)")
    return server


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict]:
    """Run ``command``; return its wall time and the JSON object on its last stdout line."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, json.loads(result.stdout.strip().splitlines()[-1])


def task_breakdown(api_url: str, flow_name: str = "train") -> dict[str, float]:
    """Seconds per task of the latest ``flow_name`` flow run (from the Prefect API)."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        latest = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )[0]
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[latest.id]))
        )
    breakdown = {"(flow run)": latest.total_run_time.total_seconds()}
    for task_run in task_runs:
        name = task_run.name.rsplit("-", 1)[0]
        breakdown[name] = breakdown.get(name, 0.0) + task_run.total_run_time.total_seconds()
    return breakdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / "loopml" / "data" / "telco_churn.csv"))
    parser.add_argument("--target", default="churn")
    parser.add_argument(
        "--trials",
        default="12",
        help="trial budgets, comma-separated (two or more also print the cost per trial)",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both")
    parser.add_argument(
        "--cold", action="store_true", help="a fresh loopml process per run (no warm process)"
    )
    arguments = parser.parse_args()
    budgets = sorted({int(value) for value in arguments.trials.split(",")})

    workdir = Path(tempfile.mkdtemp(prefix="loopml-train-benchmark-"))
    data = Path(arguments.data).resolve()
    env = benchmark_environment(workdir / "home")
    if arguments.threads:
        env["OMP_NUM_THREADS"] = str(arguments.threads)
    warm = not arguments.cold and not env.get("PREFECT_API_URL")
    server = None if warm else prefect_api(workdir, env)
    try:
        project_dir = workdir / "project"
        project_dir.mkdir()
        init = [str(BIN / "loopml"), "init", str(data), "--target", arguments.target]
        timed([*init, "--name", PROJECT, "--json"], env, project_dir)
        api_url = start_warm_process(env, project_dir, data) if warm else env["PREFECT_API_URL"]

        results = {
            trials: run_budget(trials, arguments, env, api_url, project_dir, data)
            for trials in budgets
        }
    finally:
        if server is not None:
            stop(server)
        if warm:
            subprocess.run([str(BIN / "loopml"), "down"], env=env, capture_output=True)

    with open(data) as handle:
        rows = sum(1 for _ in handle) - 1
    print(
        f"\n{data.name} ({rows} rows), {arguments.repeats} run(s) each, "
        f"OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')}, "
        f"{'warm process' if warm else 'a fresh loopml process per run'}, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'trials':>6}  {'loopml (median)':>15}  {'bare (median)':>13}  ratio")
    for trials, (loopml_median, bare_median) in results.items():
        ratio = loopml_median / bare_median
        target = BUDGET_TARGETS.get(trials, TARGET_RATIO)
        verdict = "within" if ratio <= target else "ABOVE"
        print(
            f"{trials:>6}  {loopml_median:>13.1f} s  {bare_median:>11.1f} s  {ratio:.2f} "
            f"({verdict} the {target} target)"
        )
    if len(results) >= 2:
        print_marginal_cost(results)
    print(f"work folder: {workdir}")


def start_warm_process(env: dict[str, str], project_dir: Path, data: Path) -> str:
    """Start the home's local server and warm process with a first command (not counted), as a
    user's first command of the day does; returns the server's API URL."""
    env.update({"LOOPML_SERVER_PORT": "0"})
    started = time.perf_counter()
    timed(
        [str(BIN / "loopml"), "validate", PROJECT, "--data", str(data), "--json"], env, project_dir
    )
    home = Path(env["LOOPML_HOME"])
    from _cli_project import wait_for_warm_process

    wait_for_warm_process(home)
    print(
        f"local server and warm process up in {time.perf_counter() - started:.1f} s (not counted)"
    )
    return local_api(home)


def local_api(home: Path) -> str:
    """The API URL of the home's local server, its auth string set for this process's client."""
    record = json.loads((home / "server.json").read_text())
    os.environ["PREFECT_API_AUTH_STRING"] = json.loads((home / "credentials.json").read_text())[
        "prefect_auth_string"
    ]
    return record["api_url"]


def run_budget(
    trials: int,
    arguments: argparse.Namespace,
    env: dict[str, str],
    api_url: str,
    project_dir: Path,
    data: Path,
) -> tuple[float, float]:
    """Median wall seconds of ``loopml train`` and of the bare script at one trial budget."""
    # No time budget on either side: the same trials must run, however long they take.
    train = [str(BIN / "loopml"), "train", PROJECT, "--trials", str(trials), "--timeout", "1e6"]
    bare = [sys.executable, str(REPO / "benchmarks" / "bare_train.py"), "--data", str(data)]
    bare += ["--target", arguments.target, "--trials", str(trials)]
    loopml_times, bare_times = [], []
    for repeat in range(1, arguments.repeats + 1):
        seconds, result = timed([*train, "--json"], env, project_dir)
        loopml_times.append(seconds)
        print(
            f"[{trials} trials, {repeat}] loopml train: {seconds:7.1f} s  v{result['version']} "
            f"{result['family']} test roc_auc={result['test_metrics'].get('roc_auc', 0):.4f} "
            f"({result['trials']} trials, {result['pruned']} pruned)"
        )
        for task, task_seconds in sorted(task_breakdown(api_url).items()):
            print(f"        {task:<22} {task_seconds:7.1f} s")
        seconds, result = timed(bare, env, REPO)
        bare_times.append(seconds)
        print(
            f"[{trials} trials, {repeat}] bare_train:   {seconds:7.1f} s  {result['best_family']} "
            f"holdout roc_auc={result['holdout']['roc_auc']:.4f} ({result['trials']} trials, "
            f"{result['pruned']} pruned; in-process {result['seconds']:.1f} s, "
            f"search {result['search_seconds']:.1f} s)"
        )
    return statistics.median(loopml_times), statistics.median(bare_times)


def print_marginal_cost(results: dict[int, tuple[float, float]]) -> None:
    """Split each side into a fixed cost and a cost per trial (the smallest and largest budget),
    and say from which budget the total ratio meets the target."""
    low, high = min(results), max(results)
    loopml_per_trial = (results[high][0] - results[low][0]) / (high - low)
    bare_per_trial = (results[high][1] - results[low][1]) / (high - low)
    loopml_fixed = results[low][0] - loopml_per_trial * low
    bare_fixed = results[low][1] - bare_per_trial * low
    print(
        f"per trial ({low} -> {high} trials): loopml {loopml_per_trial:.2f} s, bare "
        f"{bare_per_trial:.2f} s, ratio {loopml_per_trial / bare_per_trial:.2f}"
    )
    print(
        f"fixed cost: loopml {loopml_fixed:.1f} s, bare {bare_fixed:.1f} s "
        f"(validation, evaluation, figures, MLflow registration, the Prefect flow run, imports)"
    )
    slack = TARGET_RATIO * bare_per_trial - loopml_per_trial
    if slack > 0:
        budget = max(0.0, (loopml_fixed - TARGET_RATIO * bare_fixed) / slack)
        print(f"the total ratio reaches {TARGET_RATIO} from about {budget:.0f} trials here")
    else:
        print(f"the cost per trial alone exceeds {TARGET_RATIO} x bare")


if __name__ == "__main__":
    main()
