"""Drift alarms controlled over the whole stream: one-sided CUSUM with a false-alarm budget.

Each batch's verdict is a test at level alpha, so a stream of a hundred clean batches fires about
alpha x 100 times, and a slow drift that stays under the per-batch threshold is never caught.
The stream detector accumulates evidence across batches instead:

- every monitored column gives a z-score per batch, z = Phi^-1(1 - p), from the raw (uncorrected)
  p-value of its per-batch test (KS or chi-square); under no drift p is uniform, so z ~ N(0, 1);
- the estimated performance gives z = (baseline - estimate) / standard error (a drop is positive);
- each stream keeps Page's CUSUM, S = max(0, S + z - k), and alarms when S > h.

The threshold h comes from Siegmund's approximation of the CUSUM's in-control average run length
for N(0, 1) steps, ARL(h) = (exp(2k b) - 2k b - 1) / (2k^2) with b = h + 1.166, solved for the
project's budget: ``monitoring.stream.arl0`` expected clean batches between false alarms over all
streams together, so each of the m streams gets ARL0 x m (rates add up: a union bound).
After an alarm (and when the champion changes) the sums restart from zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SIEGMUND_CORRECTION = 1.166
MAX_Z = 8.0  # p-values below ~1e-15 carry no more information than "very small"
PERFORMANCE_STREAM = "estimated_performance"
REMEMBERED_BATCHES = 200


def siegmund_arl(threshold: float, reference_value: float) -> float:
    """In-control average run length of a one-sided CUSUM on N(0, 1) steps (Siegmund)."""
    two_k_b = 2 * reference_value * (threshold + SIEGMUND_CORRECTION)
    return (math.exp(two_k_b) - two_k_b - 1) / (2 * reference_value**2)


def cusum_threshold(arl0: float, reference_value: float = 0.5) -> float:
    """The h whose in-control ARL is ``arl0`` (bisection on Siegmund's formula)."""
    low, high = 0.0, 100.0
    for _ in range(100):
        middle = (low + high) / 2
        if siegmund_arl(middle, reference_value) < arl0:
            low = middle
        else:
            high = middle
    return high


def reference_allowance(batch_rows: int, reference_rows: int) -> float:
    """How far the reference's own sampling error can push every batch's z the same way.

    Each batch is compared with the *same* finite reference, so the reference's deviation from
    the population is a common offset in all of a column's z-scores: it has standard deviation
    sqrt(n / (n + m)) for n batch rows and m reference rows (0.35 for 500 vs 3,500). A CUSUM
    would add it up batch after batch; subtracting two of its standard deviations keeps ~98% of
    clean columns from drifting upwards at all.
    """
    if batch_rows <= 0 or reference_rows <= 0:
        return 0.0
    return 2.0 * math.sqrt(batch_rows / (batch_rows + reference_rows))


def column_observations(
    columns: dict[str, dict[str, Any]], *, batch_rows: int, reference_rows: int
) -> dict[str, float]:
    """Per-column z-scores from the per-batch verdict's raw p-values, less the reference
    allowance (columns without a test this batch are left out)."""
    from scipy.stats import norm

    allowance = reference_allowance(batch_rows, reference_rows)
    observations = {}
    for name, column in columns.items():
        p_value = column.get("raw_p_value")
        if p_value is None or not np.isfinite(p_value):
            continue
        z = float(np.clip(norm.isf(p_value), -MAX_Z, MAX_Z))
        observations[f"column:{name}"] = z - allowance
    return observations


def performance_observation(drop: float | None, standard_error: float | None) -> float | None:
    """z of the estimated performance against its baseline (a drop is positive)."""
    if drop is None or not standard_error or not np.isfinite(standard_error):
        return None
    return float(np.clip(drop / standard_error, -MAX_Z, MAX_Z))


@dataclass
class StreamState:
    """The CUSUM sums of a project's streams, persisted between batches."""

    model_version: str | None = None
    batches: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    alarms: int = 0
    last_alarm: dict[str, Any] | None = None
    recent_batches: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> StreamState:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(asdict(self)))
        scratch.replace(path)


def update_stream(
    state: StreamState,
    observations: dict[str, float],
    *,
    batch_id: str,
    model_version: str,
    arl0: float,
    reference_value: float = 0.5,
) -> tuple[StreamState, dict[str, Any]]:
    """Add one batch's z-scores to the sums; the stream verdict of this batch.

    A batch seen already (re-monitored) does not count twice; a new champion restarts the sums.
    """
    if state.model_version != model_version:
        state = StreamState(model_version=model_version, alarms=state.alarms)
    repeated = batch_id in state.recent_batches
    streams = max(len(observations), 1)
    threshold = cusum_threshold(arl0 * streams, reference_value)
    alarmed: list[str] = []
    if not repeated:
        state.batches += 1
        for name, z in observations.items():
            state.sums[name] = max(0.0, state.sums.get(name, 0.0) + z - reference_value)
        alarmed = sorted(
            (name for name, total in state.sums.items() if total > threshold),
            key=lambda name: -state.sums[name],
        )
        state.recent_batches = [*state.recent_batches, batch_id][-REMEMBERED_BATCHES:]
    verdict = {
        "alarm": bool(alarmed),
        "alarmed_streams": alarmed,
        "threshold": threshold,
        "reference_value": reference_value,
        "arl0": arl0,
        "streams": len(observations),
        "batches": state.batches,
        "largest": dict(sorted(state.sums.items(), key=lambda kv: -kv[1])[:5]),
        "alarms": state.alarms + bool(alarmed),
        "repeated_batch": repeated,
    }
    if alarmed:
        state.alarms += 1
        state.last_alarm = {"batch_id": batch_id, "streams": alarmed, "batches": state.batches}
        state.sums = {}
        state.batches = 0
    verdict["last_alarm"] = state.last_alarm
    return state, verdict
