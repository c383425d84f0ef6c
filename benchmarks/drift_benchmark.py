"""Drift benchmark: loopml's profile + chunked fast path against Evidently's DataDriftPreset.

Run on demand (not a test):

    .venv/bin/python benchmarks/drift_benchmark.py --rows 1000000 --big-rows 10000000

Data: synthetic reference and current tables (14 numeric + 6 categorical columns, the current one
shifted in 4 key columns; optionally a clean current too), written to Parquet. Every measurement
runs in its own subprocess and reports its wall time and PEAK RSS (``resource.getrusage``
``ru_maxrss`` of that process, which includes the interpreter and imports; the RSS right after
imports is printed as the baseline). Measurements:

- ``profile``: read the reference Parquet (strings as categories), build the ReferenceProfile,
  save it as JSON (done once per model version in production).
- ``detect``: load the profile JSON, stream the current Parquet in 100k-row chunks, compute
  Evidently-default verdicts (fast path) and the DriftPolicy verdict.
- ``evidently``: read both Parquet files whole, run ``Report([DataDriftPreset()])`` with its
  defaults, extract Evidently's per-column verdicts.
- ``detect`` on a 10M-row current batch (``--big-rows``): memory must stay flat. Measured with
  both chunk readers: ``loopml.data.iter_table_chunks`` and ``ParquetFile(pre_buffer=False)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import CATEGORICAL, KEY_SHIFT, NUMERIC, write_synthetic_parquet  # noqa: E402

CHUNK_ROWS = 100_000


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    """User + system CPU seconds of this process: comparable even on a busy shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- measurements


def measure_profile(reference_path: Path, profile_path: Path) -> dict:
    import pandas as pd

    from loopml.drift.profile import build_reference_profile

    baseline = _current_rss_mb()
    start = time.perf_counter()
    reference = pd.read_parquet(reference_path, read_dictionary=_string_columns(reference_path))
    loaded = time.perf_counter()
    profile = build_reference_profile(reference, NUMERIC, CATEGORICAL)
    built = time.perf_counter()
    profile_path.write_text(json.dumps(profile.to_dict()))
    return {
        "load_s": loaded - start,
        "build_s": built - loaded,
        "total_s": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
        "cpu_s": _cpu_s(),
        "baseline_rss_mb": baseline,
        "profile_json_kb": profile_path.stat().st_size / 1024,
    }


def _string_columns(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return [field.name for field in schema if pa.types.is_string(field.type)]


def flat_parquet_chunks(path: Path, chunk_rows: int):
    """Parquet chunks with pre-buffering off and strings read as categories.

    pyarrow's default pre_buffer=True keeps growing (about 6.5 MB per 100k rows of this table)
    until the file is closed; off, memory stays flat. Dictionary-decoded strings become pandas
    Categoricals, much cheaper to build and count than Python string objects.
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, pre_buffer=False, read_dictionary=_string_columns(path))
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def measure_detect(profile_path: Path, current_path: Path, reader: Path = Path("loopml")) -> dict:
    from evidently_defaults import evidently_default_columns

    from loopml.data import iter_table_chunks
    from loopml.drift.batch import summarize_batch
    from loopml.drift.profile import ReferenceProfile
    from loopml.drift.verdict import detect_drift

    baseline = _current_rss_mb()
    start = time.perf_counter()
    profile = ReferenceProfile.from_dict(json.loads(profile_path.read_text()))
    if str(reader) == "flat":
        chunks = flat_parquet_chunks(current_path, CHUNK_ROWS)
    else:
        chunks = iter_table_chunks(current_path, CHUNK_ROWS)
    summary = summarize_batch(profile, chunks)
    summarized = time.perf_counter()
    evidently_like = evidently_default_columns(profile, summary)
    verdict = detect_drift(profile, summary)
    return {
        "summarize_s": summarized - start,
        "total_s": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
        "cpu_s": _cpu_s(),
        "baseline_rss_mb": baseline,
        "rows": summary.n_rows,
        "verdicts": {name: column.drifted for name, column in evidently_like.items()},
        "scores": {name: column.score for name, column in evidently_like.items()},
        "policy": {"status": verdict.status, "drifted_columns": verdict.drifted_columns},
    }


def measure_evidently(reference_path: Path, current_path: Path) -> dict:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from loopml.reports import evidently_column_drift

    baseline = _current_rss_mb()
    start = time.perf_counter()
    reference = pd.read_parquet(reference_path)
    current = pd.read_parquet(current_path)
    loaded = time.perf_counter()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    drift = evidently_column_drift(snapshot)
    return {
        "load_s": loaded - start,
        "report_s": time.perf_counter() - loaded,
        "total_s": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(),
        "cpu_s": _cpu_s(),
        "baseline_rss_mb": baseline,
        "verdicts": {name: column["drifted"] for name, column in drift["columns"].items()},
        "scores": {name: column["score"] for name, column in drift["columns"].items()},
    }


MEASURES = {"profile": measure_profile, "detect": measure_detect, "evidently": measure_evidently}


def run_measure(name: str, *paths: Path) -> dict:
    """Run one measurement in a fresh interpreter so its peak RSS is its own."""
    command = [sys.executable, __file__, "--measure", name, *map(str, paths)]
    env = {**os.environ, "DO_NOT_TRACK": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"measurement {name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def _agreement(ours: dict, theirs: dict) -> tuple[int, int, list[str]]:
    differing = sorted(name for name in theirs if ours.get(name) != theirs[name])
    return len(theirs) - len(differing), len(theirs), differing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="reference and current rows")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="0 skips the 10M run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/loopml-drift-benchmark"))
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument(
        "--reader",
        choices=["loopml", "flat"],
        default="loopml",
        help="chunk reader: loopml.data.iter_table_chunks, or ParquetFile(pre_buffer=False)",
    )
    parser.add_argument(
        "--clean-batch", action="store_true", help="also compare on an unshifted current batch"
    )
    args = parser.parse_args()

    workdir = args.workdir / str(args.rows)
    reference = workdir / "reference.parquet"
    batches = {"shifted": workdir / "current_shifted.parquet"}
    if args.clean_batch:
        batches["clean"] = workdir / "current_clean.parquet"
    start = time.perf_counter()
    if not reference.exists():
        write_synthetic_parquet(reference, args.rows, seed=1)
    if not batches["shifted"].exists():
        write_synthetic_parquet(batches["shifted"], args.rows, seed=2, shift=KEY_SHIFT)
    if "clean" in batches and not batches["clean"].exists():
        write_synthetic_parquet(batches["clean"], args.rows, seed=3)
    print(f"data: {args.rows:,} rows x 20 columns per table ({time.perf_counter() - start:.0f} s)")

    profile_path = workdir / "profile.json"
    profile = run_measure("profile", reference, profile_path)
    print(
        f"profile build   : {profile['total_s']:.2f} s (read {profile['load_s']:.2f} s, "
        f"build {profile['build_s']:.2f} s; CPU {profile['cpu_s']:.1f} s incl. imports), "
        f"peak RSS {profile['peak_rss_mb']:.0f} MB "
        f"(baseline {profile['baseline_rss_mb']:.0f} MB), JSON {profile['profile_json_kb']:.0f} KB"
    )
    for label, batch in batches.items():
        detect = run_measure("detect", profile_path, batch, Path(args.reader))
        fast_total = profile["total_s"] + detect["total_s"]
        fast_peak = max(profile["peak_rss_mb"], detect["peak_rss_mb"])
        print(
            f"[{label}] fast detect (chunks of {CHUNK_ROWS:,}): {detect['total_s']:.2f} s "
            f"(CPU {detect['cpu_s']:.1f} s), "
            f"peak RSS {detect['peak_rss_mb']:.0f} MB (baseline {detect['baseline_rss_mb']:.0f} MB)"
        )
        print(
            f"[{label}] fast path total (profile + detect): {fast_total:.2f} s, "
            f"peak {fast_peak:.0f} MB"
        )
        print(f"[{label}] policy verdict: {detect['policy']}")
        if args.skip_evidently:
            continue
        evidently = run_measure("evidently", reference, batch)
        agreed, total, differing = _agreement(detect["verdicts"], evidently["verdicts"])
        print(
            f"[{label}] Evidently DataDriftPreset: {evidently['total_s']:.2f} s (read "
            f"{evidently['load_s']:.2f} s, report {evidently['report_s']:.2f} s; CPU "
            f"{evidently['cpu_s']:.1f} s), peak RSS "
            f"{evidently['peak_rss_mb']:.0f} MB (baseline {evidently['baseline_rss_mb']:.0f} MB)"
        )
        fast_cpu = profile["cpu_s"] + detect["cpu_s"]
        print(
            f"[{label}] ratios Evidently/fast: time {evidently['total_s'] / fast_total:.1f}x, "
            f"CPU {evidently['cpu_s'] / fast_cpu:.1f}x, "
            f"peak memory {evidently['peak_rss_mb'] / fast_peak:.1f}x"
        )
        print(
            f"[{label}] verdict agreement: {agreed}/{total} = {agreed / total:.0%}"
            + (f"; differing: {differing}" if differing else "")
        )
        worst = max(
            abs(detect["scores"][name] - evidently["scores"][name]) for name in evidently["scores"]
        )
        print(f"[{label}] largest score difference (same statistic): {worst:.2e}")

    if args.big_rows:
        big = args.workdir / f"big_{args.big_rows}.parquet"
        if not big.exists():
            started = time.perf_counter()
            write_synthetic_parquet(big, args.big_rows, seed=4, shift=KEY_SHIFT)
            print(
                f"data: {args.big_rows:,}-row current batch ({time.perf_counter() - started:.0f} s)"
            )
        for reader in ("loopml", "flat"):
            detect = run_measure("detect", profile_path, big, Path(reader))
            rate = detect["rows"] / detect["total_s"] / 1e6
            print(
                f"[{detect['rows']:,} rows, reader {reader}] fast detect from chunks: "
                f"{detect['total_s']:.2f} s ({rate:.2f} M rows/s, CPU {detect['cpu_s']:.1f} s)"
                f", peak RSS {detect['peak_rss_mb']:.0f} MB "
                f"(baseline {detect['baseline_rss_mb']:.0f} MB); policy: {detect['policy']}"
            )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        result = MEASURES[sys.argv[2]](*map(Path, sys.argv[3:]))
        print(json.dumps(result))
    else:
        main()
