"""CPU used by an idle ``loopml up`` (one trained project): target <= 1% of one core.

In a fresh LOOPML_HOME: ``loopml init`` + ``loopml train`` (2 logistic trials) make a champion;
``loopml down`` stops the local Prefect server that train started, so that ``loopml up`` starts
its own and every service is in its process tree. Once ``stack.json`` is written (the stack
answers) and ``--settle`` seconds more have passed (start-up work: migrations, the runner's first
registrations), the CPU seconds (user + system) of the whole tree of ``loopml up`` are summed
over ``--seconds`` of idleness and printed as % of one core, with a breakdown per service
(Prefect server, MLflow UI, Evidently UI, runner, the ``up`` process with its inbox watcher).

Processes are sampled every ``--sample`` seconds (psutil): one that starts and ends between two
samples is still counted through its parent's reaped-children times; the number of processes
started during the window is printed too (an idle stack should start none).

    .venv/bin/python benchmarks/idle_cpu_benchmark.py [--seconds 300] [--settle 30]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli_project import LOOPML, cli_environment, init_small_project, run, scratch  # noqa: E402

PROJECT = "idle"
TARGET_PERCENT = 1.0


def service_of(process: psutil.Process, root_pid: int) -> str:
    """Which part of the stack a process is, from its command line."""
    if process.pid == root_pid:
        return "loopml up (supervisor, inbox watcher)"
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    for needle, name in (
        ("server_watchdog", "Prefect server watchdog"),
        ("prefect server", "Prefect server"),
        ("uvicorn", "Prefect server"),
        ("mlflow", "MLflow UI"),
        ("evidently", "Evidently UI"),
        ("loopml.cli serve", "runner (served deployments)"),
    ):
        if needle in command:
            return name
    return f"other: {command[:80]}"


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


class CpuMeter:
    """Per-process CPU seconds of a process tree between ``start`` and ``stop``."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.first: dict[int, tuple[float, float]] = {}  # pid -> (own, reaped children)
        self.last: dict[int, tuple[float, float]] = {}
        self.names: dict[int, str] = {}
        self.parents: dict[int, int] = {}
        self.started_during: list[str] = []
        self.at_start: set[int] = set()

    def sample(self) -> None:
        for process in tree(self.root):
            try:
                times = process.cpu_times()
                own = times.user + times.system
                reaped = times.children_user + times.children_system
                if process.pid not in self.names:
                    self.names[process.pid] = service_of(process, self.root.pid)
                    self.parents[process.pid] = process.ppid()
                    if self.at_start:
                        self.started_during.append(self.names[process.pid])
            except psutil.Error:
                continue
            self.first.setdefault(process.pid, (own, reaped) if not self.at_start else (0.0, 0.0))
            self.last[process.pid] = (own, reaped)

    def start(self) -> None:
        self.sample()
        self.at_start = set(self.first) or {self.root.pid}

    def by_service(self) -> dict[str, float]:
        """CPU seconds per service; a process that died is counted by its parent's reaped
        children time (when its parent is in the tree), not twice."""
        alive = {process.pid for process in tree(self.root)}
        seconds: dict[str, float] = defaultdict(float)
        for pid, (own, reaped) in self.last.items():
            first_own, first_reaped = self.first[pid]
            if pid not in alive and self.parents.get(pid) in self.last:
                continue
            seconds[self.names[pid]] += (own - first_own) + (reaped - first_reaped)
        return dict(seconds)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="idle time measured")
    parser.add_argument("--settle", type=float, default=30.0, help="start-up time not measured")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()

    root, home, project_dir = scratch("loopml-idle-")
    env, loopml = cli_environment(home), LOOPML
    init_small_project(project_dir, PROJECT, env)
    run([loopml, "train", PROJECT], project_dir, env)
    run([loopml, "down"], project_dir, env)  # 'up' starts its own server, in its tree

    command = [loopml, "up", "--json", "--project", PROJECT]
    for option in ("--prefect-port", "--mlflow-port", "--evidently-port"):
        command += [option, str(free_port())]
    started = time.monotonic()
    with open(root / "up.stderr", "w") as log:
        up = subprocess.Popen(
            command, cwd=project_dir, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        stack_file = home / "stack.json"
        while not stack_file.is_file():
            if up.poll() is not None or time.monotonic() - started > 300:
                raise SystemExit(f"loopml up did not start: {(root / 'up.stderr').read_text()}")
            time.sleep(0.5)
        ready = time.monotonic() - started
        print(f"loopml up ready in {ready:.1f} s; settling {args.settle:.0f} s", flush=True)
        time.sleep(args.settle)

        meter = CpuMeter(up.pid)
        meter.start()
        window_start, window_start_utc = time.monotonic(), datetime.now(UTC)
        while (left := args.seconds - (time.monotonic() - window_start)) > 0:
            time.sleep(min(args.sample, left))
            meter.sample()
        window = time.monotonic() - window_start
        seconds = meter.by_service()
        runs_started = count_flow_runs(home, since=window_start_utc)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()

    total = sum(seconds.values())
    percent = 100 * total / window
    print(f"idle window: {window:.0f} s, processes in the tree: {len(meter.at_start)}")
    for name, used in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {name:<40} {used:7.2f} s CPU = {100 * used / window:5.2f}% of a core")
    print(f"processes started during the window: {len(meter.started_during)}")
    print(f"flow runs that started during the window: {runs_started}")
    met = "met" if percent <= TARGET_PERCENT else "NOT met"
    print(f"idle loopml up: {total:.2f} CPU s in {window:.0f} s = {percent:.2f}% of one core "
          f"(target <= {TARGET_PERCENT:.0f}%: {met})")  # fmt: skip
    print(json.dumps({"window_seconds": window, "cpu_seconds": total, "percent": percent,
                      "by_service": seconds}))  # fmt: skip


def count_flow_runs(home: Path, since: datetime) -> int | None:
    """Flow runs that started (not merely scheduled) since ``since``: none while idle."""
    import base64
    import urllib.request

    try:
        stack = json.loads((home / "stack.json").read_text())
        auth = json.loads((home / "credentials.json").read_text())["prefect_auth_string"]
        request = urllib.request.Request(
            f"{stack['prefect_api_url']}/flow_runs/count",
            data=json.dumps(
                {
                    "flow_runs": {
                        # Prefect filters start_time on the expected start of runs not started
                        "start_time": {"after_": since.isoformat()},
                        "state": {"type": {"not_any_": ["SCHEDULED", "PENDING"]}},
                    }
                }
            ).encode(),
            headers={
                "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(json.loads(response.read()))
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    main()
