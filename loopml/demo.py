"""The demo's simulated stream: clean batches, then drifting ones, from the Telco sample.

Drifting batches change three things a real churn table sees over time: the numeric mix
(more new customers, ``tenure`` down, on a new premium price tier, ``monthly_charges`` up by up
to 50), the category mix (month-to-month contracts and fibre take over) and the relation between
features and target (a retention offer stops electronic-check payers from churning while long
contracts start to).

The new tier matters for the loop: its customers sit mostly above the history's prices, so a
retrained model can learn the new relation there without unlearning the old one elsewhere. A
relation that changed inside the old range only could not be learnt from a few hundred new
rows mixed into thousands of old ones (nothing tells the two apart), and the gate would then,
rightly, refuse most challengers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TARGET = "churn"
PREMIUM_TIER_SHIFT = 50.0  # at full strength; the suggested suite allows up to max + range/2


def split_history(
    frame: pd.DataFrame, history_share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the first champion learns from, and the pool later batches are drawn from."""
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(len(shuffled) * history_share)
    return shuffled.iloc[:cut].reset_index(drop=True), shuffled.iloc[cut:].reset_index(drop=True)


def clean_batch(pool: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Rows drawn from the same distribution as the history."""
    picked = rng.choice(len(pool), size=min(rows, len(pool)), replace=False)
    return pool.iloc[picked].reset_index(drop=True)


def drifting_batch(
    pool: pd.DataFrame, rows: int, rng: np.random.Generator, strength: float = 1.0
) -> pd.DataFrame:
    """Rows resampled towards new, month-to-month, fibre customers, with the churn relation
    changed; ``strength`` (0..1) scales every change."""
    weights = np.ones(len(pool))
    weights *= np.where(pool["contract"] == "Month-to-month", 1 + 3 * strength, 1.0)
    weights *= np.where(pool["internet_service"] == "Fiber optic", 1 + 2 * strength, 1.0)
    weights *= np.where(pool["tenure"] < 12, 1 + 3 * strength, 1.0)
    weights /= weights.sum()
    # Without replacement: a real batch does not hold the same customer twice.
    picked = rng.choice(len(pool), size=min(rows, len(pool)), replace=False, p=weights)
    batch = pool.iloc[picked].reset_index(drop=True).copy()
    batch["monthly_charges"] = batch["monthly_charges"] + PREMIUM_TIER_SHIFT * strength
    flip = rng.random(len(batch)) < 0.85 * strength
    offer = (batch["payment_method"] == "Electronic check") & flip
    batch.loc[offer, TARGET] = "No"
    long_contract = batch["contract"].isin(["One year", "Two year"]) & flip
    batch.loc[long_contract, TARGET] = "Yes"
    return batch


def stream(
    pool: pd.DataFrame, *, clean: int, drifting: int, rows: int, seed: int
) -> list[tuple[str, pd.DataFrame]]:
    """``clean`` clean batches then ``drifting`` drifting ones of growing strength."""
    rng = np.random.default_rng(seed)
    batches = [("clean", clean_batch(pool, rows, rng)) for _ in range(clean)]
    for number in range(drifting):
        strength = min(1.0, 0.8 + 0.2 * number)
        batches.append(("drifting", drifting_batch(pool, rows, rng, strength)))
    return batches
