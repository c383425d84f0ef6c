"""A synthetic customer table for the drift benchmark: 14 numeric + 6 categorical columns.

Correlated (a shared latent factor), skewed (log-normal, exponential), zero-inflated and discrete
columns, and categories with rare levels. ``shift`` moves four key columns, written chunk by
chunk to Parquet so 10M rows never sit in memory at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = [
    "age", "income", "balance", "purchases", "tenure_months", "score", "latency_ms",
    "utilization", "has_card", "rating", "debt_ratio", "visits", "discount", "temperature",
]  # fmt: skip
CATEGORICAL = ["region", "plan", "device", "channel", "segment", "is_member"]
KEY_SHIFT = {"income": 0.3, "age": 5.0, "plan": 0.3, "region": [0.1, 0.2, 0.3, 0.2, 0.2]}
_REGIONS = np.array(["north", "south", "east", "west", "central"], dtype=object)
_DEVICES = np.array(["mobile", "desktop", "tablet", "tv"], dtype=object)
_CHANNELS = np.array(["organic", "ads", "email", "partner", "referral", "other"], dtype=object)
_SEGMENTS = np.array([f"seg_{i:02d}" for i in range(20)], dtype=object)
_PLANS = np.array(["basic", "standard", "premium"], dtype=object)


def _pick(rng: np.random.Generator, values: np.ndarray, n: int, p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return values[
        np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right").clip(
            0, len(values) - 1
        )
    ]


def synthetic_chunk(n: int, rng: np.random.Generator, shift: dict | None = None) -> pd.DataFrame:
    shift = shift or {}
    latent = rng.standard_normal(n)
    wealth = 0.6 * latent + 0.8 * rng.standard_normal(n)
    plan_index = np.digitize(wealth, [-0.5, 0.5])
    if "plan" in shift:
        plan_index = np.where(rng.random(n) < shift["plan"], 0, plan_index)
    zipf = 1 / np.arange(1, 21)
    return pd.DataFrame(
        {
            "age": np.clip(np.round(40 + 12 * latent + shift.get("age", 0.0)), 18, 90),
            "income": np.exp(10.5 + 0.5 * wealth + shift.get("income", 0.0)),
            "balance": np.where(rng.random(n) < 0.3, 0.0, rng.lognormal(7, 1.2, n)),
            "purchases": rng.poisson(np.exp(1 + 0.3 * latent)),
            "tenure_months": rng.integers(0, 73, n),
            "score": rng.beta(2, 5, n),
            "latency_ms": rng.exponential(120, n) + 5,
            "utilization": np.clip(0.3 + 0.15 * wealth + 0.1 * rng.standard_normal(n), 0, 1),
            "has_card": (rng.random(n) < 0.35 + 0.1 * (latent > 0)).astype(np.int64),
            "rating": rng.integers(1, 6, n),
            "debt_ratio": np.abs(0.4 + 0.2 * rng.standard_normal(n)),
            "visits": rng.negative_binomial(2, 0.3, n),
            "discount": rng.integers(0, 7, n) * 0.05,
            "temperature": 15 + 8 * np.sin(rng.random(n) * 6.28) + rng.standard_normal(n),
            "region": _pick(rng, _REGIONS, n, shift.get("region", [0.4, 0.25, 0.15, 0.12, 0.08])),
            "plan": _PLANS[plan_index],
            "device": _pick(rng, _DEVICES, n, [0.55, 0.3, 0.1, 0.05]),
            "channel": _pick(rng, _CHANNELS, n, [0.4, 0.25, 0.15, 0.1, 0.07, 0.03]),
            "segment": _pick(rng, _SEGMENTS, n, zipf),
            "is_member": np.where(rng.random(n) < 0.45, "yes", "no").astype(object),
        }
    )


def write_synthetic_parquet(
    path: Path, rows: int, seed: int, shift: dict | None = None, chunk_rows: int = 500_000
) -> Path:
    """Write ``rows`` synthetic rows to ``path`` in row groups of ``chunk_rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for start in range(0, rows, chunk_rows):
            chunk = synthetic_chunk(min(chunk_rows, rows - start), rng, shift)
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return path
