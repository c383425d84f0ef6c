"""Training-data policies for a retraining, and the time-ordered backtest that picks one.

After a drift, a few hundred new rows drowned in thousands of old ones teach the model little;
recent rows alone may be too few. Which mix predicts the new traffic best is an empirical
question, so a retraining tries each policy on older rows and scores it on the newest ones.

- ``all_history``: the champion's training data plus the recent window, all rows equal.
- ``recency_weighted``: the same rows, weighted by recency (sample weights: a row's weight halves
  for every ``half_life_rows`` newer rows; the reference counts as older than every recent row).
- ``recent_only``: the recent window alone, when it has at least ``min_recent_rows`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopml.labels import drop_copies
from loopml.metrics import metric_direction


@dataclass
class PolicyData:
    """The rows (and weights) one policy trains on."""

    policy: str
    frame: pd.DataFrame
    weights: np.ndarray | None = None


@dataclass
class PolicyChoice:
    """The chosen policy and the evidence for it (for the MLflow run, ledger and status)."""

    policy: str
    metric: str
    scores: dict[str, float] = field(default_factory=dict)  # policy -> backtest score
    training_rows: dict[str, int] = field(default_factory=dict)  # policy -> backtest fit rows
    backtest_rows: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "metric": self.metric,
            "scores": self.scores,
            "training_rows": self.training_rows,
            "backtest_rows": self.backtest_rows,
            "note": self.note,
        }

    def text(self) -> str:
        """``recent_only (backtest roc_auc: all_history 0.61, recent_only 0.74; 120 rows)``."""
        if not self.scores:
            return f"{self.policy} ({self.note})" if self.note else self.policy
        scores = ", ".join(f"{name} {value:.4g}" for name, value in self.scores.items())
        return f"{self.policy} (backtest {self.metric}: {scores}; {self.backtest_rows} rows)"


def policy_data(
    policy: str,
    reference: pd.DataFrame,
    recent: pd.DataFrame,
    *,
    half_life_rows: int,
    min_recent_rows: int,
) -> PolicyData | None:
    """The training rows of ``policy``; ``None`` when it does not apply (too few recent rows).

    ``recent`` must be in time order, oldest first.
    """
    if policy == "recent_only":
        if len(recent) < min_recent_rows:
            return None
        return PolicyData(policy, recent.reset_index(drop=True))
    frame = pd.concat([reference, recent], ignore_index=True)
    if policy == "all_history":
        return PolicyData(policy, frame)
    if policy == "recency_weighted":
        return PolicyData(
            policy, frame, recency_weights(len(reference), len(recent), half_life_rows)
        )
    raise ValueError(f"unknown data policy {policy!r}")


def recency_weights(reference_rows: int, recent_rows: int, half_life_rows: int) -> np.ndarray:
    """Weights halving every ``half_life_rows`` newer rows, mean 1 (so regularisation tuned on
    unweighted rows keeps its strength); reference rows all count as older than recent ones."""
    ages = np.concatenate(
        [np.full(reference_rows, float(recent_rows)), np.arange(recent_rows - 1, -1, -1.0)]
    )
    weights = 0.5 ** (ages / half_life_rows)
    return weights / weights.mean() if weights.size else weights


def split_newest(
    newest: pd.DataFrame,
    columns: list[str],
    *,
    backtest_share: float,
    min_backtest_rows: int,
    min_gate_rows: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The newest labelled rows, split between the policy backtest and the gate.

    Rows alternate (every k-th row goes to the backtest), so both parts are equally new: the
    newest traffic is what both must be judged on. Backtest rows that copy a gate row are
    dropped (the final challenger trains on the backtest rows). Too few rows for both: all go
    to the gate and there is no backtest.

    Returns:
        ``(backtest, gate)``.
    """
    rows = len(newest)
    wanted = int(round(rows * backtest_share))
    if wanted < min_backtest_rows or rows - wanted < min_gate_rows:
        return newest.iloc[:0], newest
    picked = np.zeros(rows, dtype=bool)
    picked[np.linspace(0, rows - 1, wanted).round().astype(int)] = True
    gate = newest[~picked]
    backtest, _ = drop_copies(newest[picked], [gate], columns)
    return backtest, gate


def choose_policy(
    policies: list[str],
    scores: dict[str, float],
    metric: str,
) -> str:
    """The policy with the best backtest score (ties and NaN scores go to the earlier policy)."""
    sign = -1.0 if metric_direction(metric) == "minimize" else 1.0
    finite = [p for p in policies if p in scores and np.isfinite(scores[p])]
    if not finite:
        return next(p for p in policies if p in scores) if scores else policies[0]
    return max(finite, key=lambda p: (sign * scores[p], -policies.index(p)))


def run_backtest(
    policies: list[str],
    reference: pd.DataFrame,
    older: pd.DataFrame,
    newest: pd.DataFrame,
    columns: list[str],
    *,
    metric: str,
    half_life_rows: int,
    min_recent_rows: int,
    fit_and_score: Callable[[PolicyData, pd.DataFrame], float],
) -> PolicyChoice:
    """Fit each applicable policy on the reference and ``older`` recent rows (time order),
    score it on the ``newest`` rows, pick the best.

    No row, nor a copy of it, is on both sides. ``fit_and_score(data, newest)`` fits one
    configuration on ``data`` and returns ``metric`` on ``newest``: the search budget is spent
    once, outside, and shared by every policy.
    """
    if newest.empty:
        fallback = next(
            (
                p
                for p in policies
                if policy_data(
                    p,
                    reference,
                    older,
                    half_life_rows=half_life_rows,
                    min_recent_rows=min_recent_rows,
                )
                is not None
            ),
            "all_history",
        )
        return PolicyChoice(
            policy=fallback,
            metric=metric,
            note=f"too few recent labelled rows to backtest ({len(older)} older, none newest)",
        )
    fit_reference, _ = drop_copies(reference, [newest], columns)
    fit_older, _ = drop_copies(older, [newest], columns)
    choice = PolicyChoice(policy=policies[0], metric=metric, backtest_rows=len(newest))
    for policy in policies:
        data = policy_data(
            policy,
            fit_reference,
            fit_older,
            half_life_rows=half_life_rows,
            min_recent_rows=min_recent_rows,
        )
        if data is None:
            continue
        choice.training_rows[policy] = len(data.frame)
        choice.scores[policy] = float(fit_and_score(data, newest))
    if not choice.scores:
        choice.note = "no policy applies"
        return choice
    choice.policy = choose_policy(policies, choice.scores, metric)
    return choice
