"""Seconds per explained row for each model family (Telco sample, 19 columns).

PYTHONPATH=. python benchmarks/explain_benchmark.py [ROWS]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from loopml import modeling
from loopml.config import load_config
from loopml.explain import explain_rows
from loopml.features import prepare_features, prepare_target

REPO = Path(__file__).resolve().parents[1]


def main(rows: int) -> None:
    config = load_config("telco", REPO)
    frame = pd.read_csv(REPO / config.data).sample(3_000, random_state=0).reset_index(drop=True)
    features, target = prepare_features(frame, config), prepare_target(frame, config)
    for family in ("logistic", "random_forest", "hist_gradient_boosting"):
        pipeline = modeling.build_pipeline(
            family,
            numeric_columns=config.columns.numeric,
            categorical_columns=config.columns.categorical,
            task=config.task,
            random_state=0,
        ).fit(features, target)
        began = time.perf_counter()
        explanation = explain_rows(pipeline, frame.iloc[:rows], config, background=frame)
        elapsed = time.perf_counter() - began
        print(
            f"{family:24s} {explanation.method:12s} {rows} rows {elapsed:7.2f} s "
            f"({1000 * elapsed / rows:6.1f} ms/row)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
