"""The whole ``loopml monitor`` command at scale against Evidently's default ``DataDriftPreset``.

Run on demand (not a test):

    .venv/bin/python benchmarks/monitor_scale_benchmark.py --rows 1000000

Data: the drift benchmark's synthetic tables (14 numeric + 6 categorical columns, the current one
shifted in 4 key columns), ``--rows`` reference and ``--rows`` current rows in Parquet. A project
is created and trained (2 trials) on a 20k-row sample of the reference with a derived target;
neither is counted.

Measured, in the same run:

- ``loopml monitor bench --data current.parquet --reference reference.parquet --json`` as a user
  runs it, in its own process under ``/usr/bin/time -v``: wall time, CPU time and peak RSS of the
  whole command (interpreter, imports, model and reference loading, the drift over every row, the
  verdict, its events, and the Evidently HTML report of a sample, built after the verdict). The
  Prefect server is started before timing (a command reuses the running one) and not counted.
- ``--warm``: the command as a user's later commands run, in the home's warm process
  (``loopml.cli.warm``, started by the training before timing, with the home's local server):
  the client's wall time, and the warm process's own CPU time and peak RSS (its VmHWM, which
  includes every library it holds loaded). Run twice: the first command loads the reference
  file and the model; a later one finds both loaded (as a user's next batch does). Each prints
  its flow run's time per task.
- Evidently's ``Report([DataDriftPreset()])`` with its defaults on the same two files, in its own
  process (``drift_benchmark.py --measure evidently``): wall, CPU and peak RSS.
- The drifted columns of both: loopml's verdict must name the same columns.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli_project import wait_for_warm_process  # noqa: E402
from _synthetic import KEY_SHIFT, write_synthetic_parquet  # noqa: E402
from drift_benchmark import run_measure  # noqa: E402
from train_benchmark import (  # noqa: E402
    BIN,
    benchmark_environment,
    local_api,
    prefect_api,
    stop,
    task_breakdown,
)

PROJECT = "bench"
TARGET = "churned"
TARGET_SPEEDUP = 10.0
TARGET_PEAK_MB = 1024.0


def training_table(reference: Path, out: Path, rows: int = 20_000) -> Path:
    """A labelled sample of the reference: the project's training data (not timed)."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(reference).sample(n=rows, random_state=0)
    rng = np.random.default_rng(0)
    risk = -np.log(frame["income"]) / 2 + frame["latency_ms"] / 300 + rng.normal(0, 0.5, rows)
    frame[TARGET] = np.where(risk > np.median(risk), "yes", "no")
    frame.to_csv(out, index=False)
    return out


def time_v(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``command`` under ``/usr/bin/time -v``: wall, CPU, peak RSS and its JSON result."""
    started = time.perf_counter()
    completed = subprocess.run(
        ["/usr/bin/time", "-v", *command], env=env, cwd=cwd, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")

    def field(name: str) -> float:
        return float(re.search(rf"{name}: ([\d.]+)", completed.stderr).group(1))

    return {
        "wall_s": wall,
        "cpu_s": field(r"User time \(seconds\)") + field(r"System time \(seconds\)"),
        "peak_rss_mb": field(r"Maximum resident set size \(kbytes\)") / 1024,
        "result": json.loads(completed.stdout.strip().splitlines()[-1]),
        "stderr": completed.stderr,
    }


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="reference and current rows")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--warm", action="store_true", help="run it in the home's warm process")
    arguments = parser.parse_args()

    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="loopml-monitor-benchmark-"))
    workdir.mkdir(parents=True, exist_ok=True)
    reference = workdir / f"reference-{arguments.rows}.parquet"
    current = workdir / f"current-{arguments.rows}.parquet"
    if not reference.exists():
        write_synthetic_parquet(reference, arguments.rows, seed=1)
    if not current.exists():
        write_synthetic_parquet(current, arguments.rows, seed=2, shift=KEY_SHIFT)

    env = benchmark_environment(workdir / "home")
    if arguments.warm:
        env.pop("PREFECT_API_URL", None)
        env["LOOPML_SERVER_PORT"] = "0"
    server = None if arguments.warm else prefect_api(workdir, env)
    try:
        project_dir = workdir / "project"
        if not (project_dir / "configs" / f"{PROJECT}.yaml").exists():
            project_dir.mkdir(exist_ok=True)
            table = training_table(reference, workdir / "train.csv")
            setup = [str(BIN / "loopml"), "init", str(table), "--target", TARGET]
            subprocess.run([*setup, "--name", PROJECT], env=env, cwd=project_dir, check=True)
        train = [str(BIN / "loopml"), "train", PROJECT, "--trials", "2", "--json"]
        subprocess.run(train, env=env, cwd=project_dir, check=True, capture_output=True)
        warm_pid = wait_for_warm_process(workdir / "home") if arguments.warm else None
        monitor = [str(BIN / "loopml"), "monitor", PROJECT, "--data", str(current)]
        monitor += ["--reference", str(reference), "--json"]
        # In the warm process a second command finds the reference and the model loaded.
        runs = []
        for label in ("first command", "a later command")[: 2 if warm_pid else 1]:
            cpu_before = process_cpu_seconds(warm_pid) if warm_pid else 0.0
            ours = time_v(monitor, env, project_dir)
            if warm_pid:
                ours["cpu_s"] += process_cpu_seconds(warm_pid) - cpu_before
                ours["peak_rss_mb"] = max(ours["peak_rss_mb"], peak_rss_mb(warm_pid))
                print(f"{label} in the warm process, per task:")
                breakdown = task_breakdown(local_api(workdir / "home"), "monitor")
                for task, task_seconds in sorted(breakdown.items()):
                    print(f"        {task:<26} {task_seconds:7.2f} s")
            runs.append((label, ours))
    finally:
        if server is not None:
            stop(server)
        if arguments.warm:
            subprocess.run([str(BIN / "loopml"), "down"], env=env, capture_output=True)

    for label, ours in runs:
        print(
            f"loopml monitor, {arguments.rows:,} vs {arguments.rows:,} rows x 20 columns (whole "
            f"command{', ' + label if warm_pid else ''}): {ours['wall_s']:.1f} s wall, "
            f"{ours['cpu_s']:.1f} s CPU, peak RSS {ours['peak_rss_mb']:.0f} MB (target <= "
            f"{TARGET_PEAK_MB:.0f} MB); drifted: "
            f"{', '.join(sorted(ours['result']['drifted_columns'])) or 'none'}"
        )
    if arguments.skip_evidently:
        return
    theirs = run_measure("evidently", reference, current)
    drifted = sorted(name for name, flag in theirs["verdicts"].items() if flag)
    print(
        f"Evidently DataDriftPreset (defaults), same files: {theirs['total_s']:.1f} s wall, "
        f"{theirs['cpu_s']:.1f} s CPU, peak RSS {theirs['peak_rss_mb']:.0f} MB; drifted: "
        f"{', '.join(drifted) or 'none'}"
    )
    for label, ours in runs:
        speedup = theirs["total_s"] / ours["wall_s"]
        print(
            f"ratio Evidently / loopml monitor ({label}): wall {speedup:.1f}x "
            f"({'meets' if speedup >= TARGET_SPEEDUP else 'BELOW'} the {TARGET_SPEEDUP:.0f}x "
            f"target), CPU {theirs['cpu_s'] / ours['cpu_s']:.1f}x; same drifted columns: "
            f"{sorted(ours['result']['drifted_columns']) == drifted}; load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
    print(f"work folder: {workdir}")


if __name__ == "__main__":
    main()
