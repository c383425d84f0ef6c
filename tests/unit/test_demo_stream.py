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
