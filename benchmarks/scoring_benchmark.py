"""Batch scoring throughput: loopml's scoring path vs. a bare ``predict_proba`` on the same rows.

loopml's path = read the file in chunks, prepare dtypes, predict with the threshold, write the
predictions file (Parquet) and commit the prediction log (features + predictions) atomically.
The bare path = read the same file whole and call ``predict_proba``. Both use the same fitted
pipeline (HistGradientBoosting on the Telco sample). Prints rows/s for both and the ratio
(target: loopml >= 0.8x bare at 1M rows).

    .venv/bin/python benchmarks/scoring_benchmark.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.data import bundled_sample_path
from loopml.features import prepare_features, prepare_target
from loopml.modeling import build_pipeline, with_threshold
from loopml.profiling import infer_profile
from loopml.scoring import PredictionLog, score_file


def telco_config(frame: pd.DataFrame) -> ProjectConfig:
    profile = infer_profile(frame, "churn")
    return ProjectConfig(
        name="bench",
        data="telco.csv",
        target="churn",
        task=profile.task,
        positive_label=profile.positive_label,
        columns=ColumnsConfig(numeric=profile.numeric, categorical=profile.categorical),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=200_000)
    args = parser.parse_args()

    frame = pd.read_csv(bundled_sample_path())
    config = telco_config(frame)
    model = build_pipeline(
        "hist_gradient_boosting",
        {},
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task="classification",
        random_state=0,
    ).fit(prepare_features(frame, config), prepare_target(frame, config))
    model = with_threshold(model, 0.35, config.positive_label)  # as training registers it

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        batch = frame.drop(columns="churn").sample(n=args.rows, replace=True, random_state=1)
        source = folder / "batch.parquet"
        batch.to_parquet(source, index=False)
        del batch

        started = time.perf_counter()
        bare_frame = pd.read_parquet(source)
        model.predict_proba(prepare_features(bare_frame, config))
        bare_seconds = time.perf_counter() - started
        del bare_frame

        log = PredictionLog(folder / "predictions", "bench")
        started = time.perf_counter()
        rows = score_file(
            model,
            source,
            config,
            batch_id="bbench",
            model_version="1",
            out=folder / "predictions.parquet",
            log=log,
            chunk_rows=args.chunk_rows,
        )
        loopml_seconds = time.perf_counter() - started

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bare_rate, loopml_rate = args.rows / bare_seconds, rows / loopml_seconds
    print(f"rows: {rows:,} (chunks of {args.chunk_rows:,})")
    print(f"bare predict_proba:  {bare_seconds:6.2f} s {bare_rate:>12,.0f} rows/s (read, predict)")
    print(f"loopml scoring path: {loopml_seconds:6.2f} s {loopml_rate:>12,.0f} rows/s (+ out, log)")
    print(f"ratio loopml/bare: {loopml_rate / bare_rate:.2f}x (target >= 0.80)")
    print(f"peak RSS of this process: {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
