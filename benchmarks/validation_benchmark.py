"""How long Great Expectations validation takes on a large batch, and how much memory it needs.

Builds a synthetic table (default 1,000,000 rows x 20 columns: 10 float, 4 integer, 5 text
features and a binary target), profiles it, suggests a suite, then validates:

1. the reference frame itself (every expectation passes),
2. a drifted copy where about 5 % of two numeric columns are out of range and 5 % of one category
   is unseen (failing expectations: the costly path, GX collects unexpected values).

Usage::

    python benchmarks/validation_benchmark.py [--rows 1000000] [--data-docs]

Peak memory is the process's maximum resident set size (``ru_maxrss``), so it includes the
frames themselves; their size is printed for comparison.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.profiling import infer_profile, suggest_suite
from loopml.validation import describe_failures, validate_frame


def synthetic_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """10 float, 4 integer and 5 text features plus a binary ``label`` target."""
    generator = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for index in range(10):
        columns[f"amount_{index}"] = generator.normal(100 * index, 10 + index, rows)
    for index in range(4):
        columns[f"count_{index}"] = generator.integers(0, 50 * (index + 1), rows)
    levels = [np.array([f"level_{n}" for n in range(count)]) for count in (3, 5, 8, 12, 20)]
    for index, choices in enumerate(levels):
        columns[f"kind_{index}"] = choices[generator.integers(0, len(choices), rows)]
    frame = pd.DataFrame(columns)
    frame.loc[generator.random(rows) < 0.01, "amount_1"] = np.nan  # a column with some nulls
    frame["label"] = np.where(generator.random(rows) < 0.3, "yes", "no")
    return frame


def drifted(frame: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    batch = frame.copy()
    rows = len(batch)
    for column in ("amount_3", "count_2"):
        chosen = generator.random(rows) < 0.05
        batch.loc[chosen, column] = batch[column].max() * 10
    chosen = generator.random(rows) < 0.05
    batch.loc[chosen, "kind_2"] = "unseen"
    return batch


def peak_rss_mb() -> float:
    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data-docs", action="store_true", help="also build Data Docs")
    args = parser.parse_args(argv)

    import great_expectations  # noqa: F401  (import cost is not validation cost)

    started = time.perf_counter()
    frame = synthetic_frame(args.rows)
    frame_mb = frame.memory_usage(deep=True).sum() / 1e6
    print(f"frame: {args.rows:,} rows x {frame.shape[1]} columns, {frame_mb:.0f} MB in memory")
    print(f"  built in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    profile = infer_profile(frame, "label")
    config = ProjectConfig(
        name="benchmark",
        data="synthetic",
        target="label",
        task=profile.task,
        positive_label=profile.positive_label,
        classes=profile.classes,
        columns=ColumnsConfig(
            numeric=profile.numeric, categorical=profile.categorical, excluded=profile.excluded
        ),
    )
    suite_json = suggest_suite(frame, config)
    print(
        f"profile + suggest_suite: {time.perf_counter() - started:.1f} s, "
        f"{len(suite_json['expectations'])} expectations"
    )

    rss_before = peak_rss_mb()
    with tempfile.TemporaryDirectory() as docs_root:
        docs_dir = Path(docs_root) / "docs" if args.data_docs else None
        started = time.perf_counter()
        report = validate_frame(frame, suite_json, data_docs_dir=docs_dir)
        seconds = time.perf_counter() - started
        print(
            f"validate (passing batch): {seconds:.1f} s, success={report.success}, "
            f"{report.successful}/{report.evaluated} passed, peak RSS {peak_rss_mb():.0f} MB "
            f"(before validation {rss_before:.0f} MB)"
        )

        batch = drifted(frame)
        started = time.perf_counter()
        report = validate_frame(batch, suite_json, data_docs_dir=docs_dir)
        seconds = time.perf_counter() - started
        print(
            f"validate (drifted batch): {seconds:.1f} s, success={report.success}, "
            f"{report.successful}/{report.evaluated} passed, peak RSS {peak_rss_mb():.0f} MB"
        )
        for line in describe_failures(report):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
