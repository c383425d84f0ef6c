"""Search throughput with 1 vs 2 (or more) Dask workers on one shared Optuna study.

The work of ``loopml train``'s search step when ``LOOPML_DASK_ADDRESS`` is set: every worker
runs :func:`loopml.search.study.run_search` on the same study (same storage and study name, the
same total budget, one native thread each), exactly as ``tasks.parallel.search_shard`` does,
on the training split of the bundled Telco sample. For each worker count a fresh Dask
``LocalCluster`` (one single-threaded process per worker, warmed up before timing) and a fresh
study; the study is created and its first trial run in this process first, as the flow does,
and only the parallel phase is timed. Prefect is left out: it adds a fixed few hundred
milliseconds per task, not per trial.

    python benchmarks/dask_benchmark.py --trials 16 --workers 1 2 --repeat 3
    python benchmarks/dask_benchmark.py --storage postgresql://postgres@127.0.0.1:5432/bench

With ``--storage`` (an empty PostgreSQL database, say) every study goes there; the default is a
SQLite file in a temporary folder. Prints one line per worker count and the speed-up, and with
``--json`` a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from loopml.config import ProjectConfig, load_config
from loopml.data import bundled_sample_path
from loopml.features import labelled_rows, prepare_features, prepare_target, split_holdout
from loopml.project import initialise_project
from loopml.search.study import run_search


def telco_project(folder: Path) -> tuple[ProjectConfig, pd.DataFrame]:
    """The config ``loopml init`` writes for the Telco sample, and its training split."""
    sample = bundled_sample_path()
    initialise_project(
        str(sample),
        target="churn",
        name="telco",
        task=None,
        positive_label="Yes",
        id_column=None,
        time_column=None,
        sql_url=None,
        project_dir=folder,
    )
    config = load_config("telco", folder)
    train, _ = split_holdout(labelled_rows(pd.read_csv(sample), config), config)
    return config, train


def shard(
    config: ProjectConfig, train: pd.DataFrame, storage: str, study_name: str, trials: int
) -> dict[str, Any]:
    """One worker's share of the search (what ``tasks.parallel.search_shard`` runs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    finished: list[int] = []
    started = time.perf_counter()
    run_search(
        prepare_features(train, config),
        prepare_target(train, config),
        config,
        storage=storage,
        study_name=study_name,
        n_trials=trials,
        timeout=None,
        on_trial=lambda info: finished.append(info["number"]),
        max_threads=1,
    )
    return {"pid": os.getpid(), "trials": finished, "seconds": time.perf_counter() - started}


def measure(
    config: ProjectConfig, train: pd.DataFrame, storage: str, workers: int, trials: int
) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    study_name = f"bench-{workers}w-{uuid.uuid4().hex[:8]}"
    features, target = prepare_features(train, config), prepare_target(train, config)
    # As the flow's search-start step: create the study and enqueue defaults once, one trial.
    run_search(
        features, target, config, storage=storage, study_name=study_name, n_trials=1, max_threads=1
    )
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        # Imports and the first sklearn fit are paid before the clock starts.
        client.run(lambda: __import__("loopml.search.study"))
        started = time.perf_counter()
        futures = [
            client.submit(shard, config, train, storage, study_name, trials, pure=False)
            for _ in range(workers)
        ]
        shards = client.gather(futures)
        seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=study_name, storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    parallel_trials = sum(len(s["trials"]) for s in shards)
    distinct = {json.dumps(t.params, sort_keys=True) for t in finished}
    return {
        "workers": workers,
        "study_trials": len(finished),
        "parallel_trials": parallel_trials,
        "seconds": seconds,
        "trials_per_minute": 60.0 * parallel_trials / seconds,
        "per_worker": [len(s["trials"]) for s in shards],
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
        "duplicate_param_sets": len(finished) - len(distinct),
        "best": max((t.value for t in finished if t.value is not None), default=None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="study budget (all workers)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds, worker counts interleaved (shared CPUs)"
    )
    parser.add_argument("--storage", help="Optuna RDB URL (default: SQLite in a temp folder)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers inherit it: one thread per trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config, train = telco_project(folder)
        storage = arguments.storage or f"sqlite:///{folder / 'optuna.db'}"
        results = []
        for workers in arguments.workers * arguments.repeat:
            result = measure(config, train, storage, workers, arguments.trials)
            results.append(result)
            print(
                f"{workers} worker(s): {result['parallel_trials']} trials in "
                f"{result['seconds']:.1f} s = {result['trials_per_minute']:.1f} trials/min "
                f"(per worker {result['per_worker']}, {result['pruned']} pruned, "
                f"{result['duplicate_param_sets']} duplicate parameter sets, "
                f"best cv {result['best']:.4f})",
                flush=True,
            )
    summary: dict[str, Any] = {
        "trials": arguments.trials,
        "rows": len(train),
        "storage": storage.split("://")[0],
        "cpus": os.cpu_count(),
        "results": results,
    }
    rates = {
        workers: statistics.median(
            r["trials_per_minute"] for r in results if r["workers"] == workers
        )
        for workers in arguments.workers
    }
    summary["median_trials_per_minute"] = rates
    for workers, rate in rates.items():
        print(f"median {workers} worker(s): {rate:.1f} trials/min")
    if len(rates) > 1:
        first, last = arguments.workers[0], arguments.workers[-1]
        summary["speedup"] = rates[last] / rates[first]
        print(f"speed-up {last} vs {first} worker(s): {summary['speedup']:.2f}x")
    if arguments.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
