"""Does the loop bring the model back after a drift? Streams driven through the flows.

Each stream: a champion trained on reference rows, then labelled batches, each monitored with its
target (``monitor_flow``, as ``loopml monitor --data BATCH`` does) and, on every alarm (drift or
degraded performance), a retraining for that batch (``retrain_flow``, as ``loopml retrain NAME
--batch-id B`` or the automation does). Printed per stream, on fresh rows of the final traffic:

- stale, loop and oracle error (1 - ROC-AUC, or RMSE): the first champion, the final champion, and
  a HistGradientBoosting refitted on the drifted labelled rows the loop had seen (or those plus
  the reference, whichever is better); recovery = (stale - loop) / (stale - oracle), after the
  2nd and after the last drifted batch;
- batches from the drift's start to the first useful promotion (a champion better than the stale
  one on the fresh rows), retrainings, promotions, harmful promotions (a promoted version worse
  with confidence than the one it replaced on the following batches' rows) and false alarms
  (alarms on a stream without drift).

Streams: (a) concept drift, classification: the Telco sample, the demo's kind of drift;
(b) concept drift, regression: a synthetic price table whose prices are re-set by two
categorical attributes, with bigger items; (c) covariate shift only on Telco (the relation is
intact, the old model stays right); (d) clean Telco batches.

Usage::

    python benchmarks/loop_benchmark.py --streams a,d [--trials 4] [--batches 6] [--rows 400]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_benchmark import start_prefect_server  # noqa: E402

from loopml import demo  # noqa: E402

REFERENCE_ROWS = 2_000
FRESH_ROWS = 1_000


# --------------------------------------------------------------------------- streams


def telco() -> pd.DataFrame:
    return pd.read_csv(REPO / "loopml" / "data" / "telco_churn.csv")


def telco_stream(kind: str, batches: int, rows: int, seed: int) -> dict:
    """Reference, clean-then-changed batches and fresh rows of the final traffic, on Telco."""
    rng = np.random.default_rng(seed)
    reference, pool = demo.split_history(telco(), REFERENCE_ROWS / 7_043, seed)
    fresh_pool, stream_pool = pool.iloc[: FRESH_ROWS * 2], pool.iloc[FRESH_ROWS * 2 :]

    def changed(source: pd.DataFrame, count: int) -> pd.DataFrame:
        if kind == "concept":
            return demo.drifting_batch(source, count, rng, 1.0)
        if kind == "covariate":
            weights = np.where(source["contract"] == "Month-to-month", 4.0, 1.0) * np.where(
                source["tenure"] < 12, 3.0, 1.0
            )
            picked = rng.choice(len(source), size=count, replace=False, p=weights / weights.sum())
            return source.iloc[picked].reset_index(drop=True)
        return demo.clean_batch(source, count, rng)

    clean = [demo.clean_batch(stream_pool, rows, rng) for _ in range(2)]
    drifted = [changed(stream_pool, rows) for _ in range(batches)]
    return {
        "reference": reference,
        "batches": clean + drifted,
        "drift_start": 2 if kind != "clean" else None,
        # Drawn like the batches (same batch size from a pool of similar size), so the fresh
        # rows have the batches' mix: one big draw without replacement would dilute the shift.
        "fresh": pd.concat(
            [changed(fresh_pool, rows) for _ in range(FRESH_ROWS // rows)], ignore_index=True
        ),
        "target": "churn",
        "init": {"positive_label": "Yes"},
    }


def price_table(rows: int, rng: np.random.Generator, drifted: bool) -> pd.DataFrame:
    """Synthetic prices: size x a rate; after the drift the rate is re-set by two categorical
    attributes and items are bigger (the new relation contradicts the old one)."""
    material = rng.choice(["wood", "steel", "glass", "stone"], rows)
    region = rng.choice(["north", "south", "east"], rows)
    size = rng.lognormal(1.0 + (0.4 if drifted else 0.0), 0.4, rows)
    age = rng.uniform(0, 30, rows)
    if drifted:
        rate = np.select(
            [(material == "wood") & (region == "north"), material == "steel", region == "south"],
            [260.0, 60.0, 180.0],
            110.0,
        )
    else:
        rate = np.select([material == "stone", material == "glass"], [140.0, 120.0], 100.0)
    price = size * rate - 2.0 * age + rng.normal(0, 25, rows)
    return pd.DataFrame(
        {"material": material, "region": region, "size": size, "age": age, "price": price}
    )


def price_stream(batches: int, rows: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "reference": price_table(4 * REFERENCE_ROWS // 2, rng, False),
        "batches": [price_table(rows, rng, False) for _ in range(2)]
        + [price_table(rows, rng, True) for _ in range(batches)],
        "drift_start": 2,
        "fresh": price_table(FRESH_ROWS, rng, True),
        "target": "price",
        "init": {"task": "regression"},
    }


STREAMS: dict[str, tuple[str, Callable[[int, int, int], dict]]] = {
    "a": (
        "concept drift, classification (Telco)",
        lambda b, r, s: telco_stream("concept", b, r, s),
    ),
    "b": ("concept drift, regression (synthetic prices)", price_stream),
    "c": ("covariate shift only (Telco)", lambda b, r, s: telco_stream("covariate", b, r, s)),
    "d": ("clean (Telco)", lambda b, r, s: telco_stream("clean", b, r, s)),
}


# --------------------------------------------------------------------------- the loop


def run_stream(key: str, stream: dict, work: Path, trials: int) -> dict:
    """Train a champion, then monitor each batch and retrain on every alarm; measure."""
    from flows.monitoring import monitor_flow
    from flows.retraining import retrain_flow
    from flows.training import train_flow
    from loopml.comparison import compare_models, load_scorer
    from loopml.config import load_config, save_config
    from loopml.project import initialise_project
    from loopml.recovery import oracle_error, recovery, scorer_error
    from loopml.registry import CHAMPION, version_by_alias
    from loopml.runtime import open_runtime

    home, project_dir = work / "home", work / "project"
    project_dir.mkdir(parents=True)
    os.environ["LOOPML_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True)
    name = f"loop_{key}"
    reference_path = project_dir / "reference.csv"
    stream["reference"].to_csv(reference_path, index=False)
    initialise_project(
        str(reference_path),
        target=stream["target"],
        name=name,
        task=stream["init"].get("task"),
        positive_label=stream["init"].get("positive_label"),
        id_column=None,
        time_column=None,
        sql_url=None,
        project_dir=project_dir,
    )
    config = load_config(name, project_dir)
    config.search.trials = trials
    save_config(config, project_dir)
    train_flow(project=name, project_dir=str(project_dir), trials=trials)
    runtime = open_runtime(name, str(project_dir))
    client = runtime.mlflow

    def champion() -> str:
        return str(version_by_alias(client, name, CHAMPION).version)

    stale_version = champion()
    champions, flags, retrainings, promotions = [], [], 0, []
    started = time.perf_counter()
    for index, batch in enumerate(stream["batches"]):
        path = project_dir / f"batch-{index}.csv"
        batch.to_csv(path, index=False)
        verdict = monitor_flow(project=name, data=str(path), project_dir=str(project_dir))
        alarm = verdict["drift_detected"] or verdict["performance_degraded"]
        flags.append(bool(alarm))
        before = champion()
        if alarm:
            result = retrain_flow(
                project=name, project_dir=str(project_dir), batch_id=verdict["batch_id"],
                trials=trials,
            )  # fmt: skip
            retrainings += not result.get("skipped")
            if result.get("promoted"):
                promotions.append((index, result["version"], before))
        champions.append(champion())
    seconds = time.perf_counter() - started

    fresh, start = stream["fresh"], stream["drift_start"]
    error_of: dict[str, float] = {}

    def version_error(version: str) -> float:
        if version not in error_of:
            scorer = load_scorer(client, name, version, config)
            error_of[version] = scorer_error(scorer, fresh, config)
        return error_of[version]

    stale = version_error(stale_version)
    figures = {
        "stream": key,
        "stale": stale,
        "loop": version_error(champions[-1]),
        "alarms": sum(flags),
        "retrainings": retrainings,
        "promotions": len(promotions),
        "seconds": seconds,
        "champion_error_by_batch": [round(version_error(v), 4) for v in champions],
    }
    harmful = 0
    for index, version, replaced in promotions:
        following = stream["batches"][index + 1 :]
        if not following:
            continue
        paired = compare_models(
            load_scorer(client, name, version, config),
            load_scorer(client, name, replaced, config),
            pd.concat(following, ignore_index=True),
            config,
            metric=config.gate_metric,
            alpha=config.gate.alpha,
            resamples=config.gate.bootstrap_resamples,
        )
        harmful += paired.worse_by(0.0)
    figures["harmful_promotions"] = harmful
    figures["false_alarms"] = sum(flags if start is None else flags[:start])
    if start is None:
        return figures
    drifted = stream["batches"][start:]
    reference = stream["reference"]
    oracle = oracle_error(config, pd.concat(drifted, ignore_index=True), reference, fresh)
    oracle_second = oracle_error(
        config, pd.concat(drifted[:2], ignore_index=True), reference, fresh
    )
    figures["oracle"] = oracle
    figures["recovery"] = recovery(stale, figures["loop"], oracle)
    figures["recovery_after_2nd"] = recovery(
        stale, version_error(champions[start + 1]), oracle_second
    )
    useful = [
        index - start + 1 for index, version, _ in promotions if version_error(version) < stale
    ]
    figures["batches_to_first_useful_promotion"] = min(useful) if useful else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="a,b,c,d")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--batches", type=int, default=6, help="changed batches per stream")
    parser.add_argument("--rows", type=int, default=400, help="rows per batch")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # SIGTERM runs the finally below, so the Prefect server started here stops with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="loop-benchmark-") as scratch:
        work = Path(scratch)
        server = None
        if not os.environ.get("PREFECT_API_URL"):
            server, api_url, _ = start_prefect_server(work / "prefect", dict(os.environ))
            os.environ["PREFECT_API_URL"] = api_url
        try:
            rows = []
            for key in args.streams.split(","):
                title, build = STREAMS[key]
                stream = build(args.batches, args.rows, args.seed)
                figures = run_stream(key, stream, work / key, args.trials)
                rows.append(figures)
                print(f"({key}) {title}")
                for field, value in figures.items():
                    shown = f"{value:.4f}" if isinstance(value, float) else value
                    print(f"    {field}: {shown}")
                sys.stdout.flush()
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
