"""The stream detector: its threshold honours the false-alarm budget, clean streams stay quiet,
slow drift is caught, and its bookkeeping (repeats, new champion) is right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml import stream
from loopml.config import DriftPolicy
from loopml.drift.profile import build_reference_profile
from loopml.drift.verdict import detect_drift


def _run_lengths(threshold: float, k: float, runs: int, rng) -> np.ndarray:
    """Simulated in-control run lengths of a one-sided CUSUM on N(0, 1) steps."""
    lengths = np.zeros(runs)
    sums = np.zeros(runs)
    alive = np.ones(runs, dtype=bool)
    step = 0
    while alive.any() and step < 20_000:
        step += 1
        sums[alive] = np.maximum(0.0, sums[alive] + rng.normal(size=alive.sum()) - k)
        stopped = alive & (sums > threshold)
        lengths[stopped] = step
        alive &= ~stopped
    lengths[alive] = step
    return lengths


def test_threshold_from_siegmunds_formula_gives_the_budgeted_run_length():
    threshold = stream.cusum_threshold(200, 0.5)

    simulated = _run_lengths(threshold, 0.5, 2_000, np.random.default_rng(0)).mean()

    assert stream.siegmund_arl(threshold, 0.5) == pytest.approx(200, rel=1e-6)
    assert 160 <= simulated <= 250


def _frame(rng, rows: int, shift: float = 0.0) -> pd.DataFrame:
    data = {f"n{i}": rng.normal(size=rows) for i in range(8)}
    data["n0"] = data["n0"] + shift
    data["c"] = rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2]).astype(object)
    return pd.DataFrame(data)


def _stream(profile, batches, arl0: float = 500):
    state, verdicts = stream.StreamState(), []
    for number, batch in enumerate(batches):
        columns = detect_drift(profile, batch, DriftPolicy()).to_dict()["columns"]
        observations = stream.column_observations(
            columns, batch_rows=len(batch), reference_rows=profile.n_rows
        )
        state, verdict = stream.update_stream(
            state, observations, batch_id=f"b{number}", model_version="1", arl0=arl0
        )
        verdicts.append(verdict)
    return verdicts


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(10)
    frame = _frame(rng, 4_000)
    return build_reference_profile(frame, [f"n{i}" for i in range(8)], ["c"])


def test_a_long_clean_stream_stays_quiet(reference):
    rng = np.random.default_rng(11)

    verdicts = _stream(reference, (_frame(rng, 500) for _ in range(100)))

    assert sum(v["alarm"] for v in verdicts) == 0
    assert verdicts[-1]["streams"] == 9 and verdicts[-1]["batches"] == 100


def test_a_slow_drift_of_a_twentieth_sd_per_batch_is_caught_within_ten_batches(reference):
    rng = np.random.default_rng(12)
    batches = (_frame(rng, 500, shift=0.05 * (b + 1)) for b in range(20))

    verdicts = _stream(reference, batches)
    first = next(number for number, v in enumerate(verdicts, start=1) if v["alarm"])

    assert first <= 10
    assert verdicts[first - 1]["alarmed_streams"] == ["column:n0"]
    # The per-batch verdict would have needed the shift to reach its effect threshold (0.1 SD
    # and significance after Holm): the stream sees it earlier or as early.


def test_a_batch_seen_twice_counts_once_and_a_new_champion_restarts_the_sums():
    state = stream.StreamState()
    state, first = stream.update_stream(
        state, {"column:x": 3.0}, batch_id="b1", model_version="1", arl0=500
    )
    state, again = stream.update_stream(
        state, {"column:x": 3.0}, batch_id="b1", model_version="1", arl0=500
    )
    assert again["repeated_batch"] is True and state.sums["column:x"] == pytest.approx(2.5)
    state, _ = stream.update_stream(
        state, {"column:x": 3.0}, batch_id="b2", model_version="2", arl0=500
    )
    assert state.sums["column:x"] == pytest.approx(2.5) and state.batches == 1


def test_state_round_trips_through_its_file(tmp_path):
    path = tmp_path / "stream.json"
    state, _ = stream.update_stream(
        stream.StreamState(), {"column:x": 2.0}, batch_id="b1", model_version="4", arl0=200
    )
    state.save(path)

    loaded = stream.StreamState.load(path)

    assert loaded == state
    assert stream.StreamState.load(tmp_path / "missing.json") == stream.StreamState()
