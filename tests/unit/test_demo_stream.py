"""The demo's simulated stream: clean batches look like the history, drifting ones do not."""

from __future__ import annotations

import numpy as np
import pandas as pd

from loopml import demo


def _pool(telco_frame: pd.DataFrame) -> pd.DataFrame:
    return demo.split_history(telco_frame, history_share=0.6, seed=7)[1]


def test_a_drifting_batch_shifts_the_mix_and_the_relation_without_repeating_a_customer(
    telco_frame,
):
    pool = _pool(telco_frame)

    batch = demo.drifting_batch(pool, 500, np.random.default_rng(0), strength=1.0)

    assert len(batch) == 500
    assert not batch.duplicated().any()
    assert batch["monthly_charges"].mean() > pool["monthly_charges"].mean() + 50  # premium tier
    share = (batch["contract"] == "Month-to-month").mean()
    assert share > (pool["contract"] == "Month-to-month").mean() + 0.1
    electronic = batch["payment_method"] == "Electronic check"
    assert (batch.loc[electronic, demo.TARGET] == "No").mean() > 0.8  # the retention offer
    long_contract = batch["contract"].isin(["One year", "Two year"])
    assert (batch.loc[long_contract, demo.TARGET] == "Yes").mean() > 0.7


def test_the_stream_is_clean_first_then_drifting(telco_frame):
    batches = demo.stream(_pool(telco_frame), clean=2, drifting=2, rows=300, seed=3)

    assert [kind for kind, _ in batches] == ["clean", "clean", "drifting", "drifting"]
    assert all(len(batch) == 300 for _, batch in batches)


def test_the_strongest_drifting_batch_still_passes_the_suite_suggested_from_the_history(
    telco_frame, tmp_path
):
    """Drift is for monitoring to find; a batch the suite rejects would be quarantined instead."""
    from loopml.validation import load_suite, validate_frame
    from tests.conftest import init_project

    history, pool = demo.split_history(telco_frame, history_share=0.6, seed=7)
    history.to_csv(tmp_path / "history.csv", index=False)
    init_project(tmp_path / "history.csv", demo.TARGET, "telco", tmp_path)
    batch = demo.drifting_batch(pool, 500, np.random.default_rng(1), strength=1.0)

    report = validate_frame(batch, load_suite(tmp_path / "expectations" / "telco.json"))

    assert report.success, report.summary()["messages"]


def test_a_retraining_line_says_its_action_once():
    from loopml.cli.demo import _retraining_line

    gate = {"version": "2", "action": "promoted", "reason": "promoted: better on recent rows"}
    other = {"version": "3", "action": "failed", "reason": "the suite refused the data"}

    assert _retraining_line(gate) == "retraining -> v2: promoted: better on recent rows"
    assert _retraining_line(other) == "retraining -> v3: failed: the suite refused the data"
