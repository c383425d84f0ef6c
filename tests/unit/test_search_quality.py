"""Beyond best-of-family: portfolio starts, blends, date and high-cardinality features, budget."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.ensemble import VotingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import FixedThresholdClassifier
from threadpoolctl import threadpool_limits

from loopml.config import ProjectConfig
from loopml.features import align_dtypes, prepare_features
from loopml.modeling import DatetimeParts, build_pipeline, skops_trusted_types
from loopml.profiling import infer_profile
from loopml.registry import serving_requirements
from loopml.search.fit import best_pipeline, fit_best, out_of_fold_scores
from loopml.search.portfolio import PORTFOLIO
from loopml.search.result import SearchResult
from loopml.search.study import run_search

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def one_native_thread():
    with threadpool_limits(limits=1):
        yield


def config_for(
    numeric: list[str],
    categorical: list[str],
    datetime: list[str] | None = None,
    **search,
) -> ProjectConfig:
    return ProjectConfig(
        name="quality",
        data="memory",
        target="y",
        task="classification",
        positive_label=1,
        columns={"numeric": numeric, "categorical": categorical, "datetime": datetime or []},
        split={"cv_folds": 3, "random_state": 3},
        search={"timeout_seconds": None, **search},
    )


def customers(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A numeric signal, a 120-level shop whose level sets the odds, a sign-up date whose
    season sets the odds, and a ticket reference unique per row (pure noise)."""
    rng = np.random.default_rng(seed)
    shops = np.array([f"shop-{i:03d}" for i in range(120)])
    shop_odds = rng.normal(0, 2.0, len(shops))
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "shop": rng.choice(shops, rows),
            "signed_up": pd.Timestamp("2021-01-01")
            + pd.to_timedelta(rng.integers(0, 3 * 365, rows), unit="D"),
            "ticket": [f"T{seed}-{i:06d}" for i in range(rows)],
        }
    )
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "x"] = np.nan
    winter = frame["signed_up"].dt.month.isin([11, 12, 1, 2]).to_numpy()
    logit = (
        np.nan_to_num(frame["x"].to_numpy())
        + shop_odds[np.searchsorted(shops, frame["shop"])]
        + 2.5 * winter
        - 1.0
    )
    target = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame, pd.Series(target, name="y")


def test_each_family_starts_from_its_portfolio_with_early_stopped_boosting():
    features, target = customers(300)
    config = config_for(["x"], [], families=["hist_gradient_boosting"], trials=3, ensemble=False)
    result = run_search(features, target, config, storage=None, study_name="portfolio")
    assert result.trials["params"].tolist() == PORTFOLIO["hist_gradient_boosting"]
    model = best_pipeline(result, config).named_steps["model"]
    assert model.early_stopping is True and model.max_iter >= 500


def test_dates_become_parts_and_elapsed_days():
    parts = DatetimeParts().fit_transform(
        pd.DataFrame({"at": ["2024-03-15 13:30", None, "not a date", "2024-03-15T14:00+01:00"]})
    )
    assert parts.shape == (4, 6)
    np.testing.assert_allclose(parts[0, :5], [2024, 3, 15, 4, 13])  # a Friday, 13h
    assert parts[0, 5] == pytest.approx(19797.5625)  # days since 1970-01-01
    assert np.isnan(parts[1]).all() and np.isnan(parts[2]).all()
    np.testing.assert_allclose(parts[3, :5], [2024, 3, 15, 4, 13])  # offsets read as UTC


def test_dates_and_high_cardinality_columns_are_profiled_and_carry_signal():
    features, target = customers(900)
    table = features.assign(signed_up=features["signed_up"].dt.strftime("%Y-%m-%d"), y=target)
    profile = infer_profile(table, "y")
    assert profile.datetime == ["signed_up"]
    assert "shop" in profile.categorical
    assert "ticket" in profile.excluded  # unique per row: an id, still excluded

    def oof_auc(config: ProjectConfig) -> float:
        result = run_search(
            prepare_features(table, config), target, config, storage=None, study_name="s"
        )
        scores = out_of_fold_scores(result, prepare_features(table, config), target, config)
        return roc_auc_score(target, scores), result

    common = {"families": ["logistic"], "trials": 1, "ensemble": False}
    numeric_only, _ = oof_auc(config_for(["x"], [], **common))
    rich, result = oof_auc(config_for(["x"], ["shop"], ["signed_up"], **common))
    assert result.high_cardinality == ["shop"]  # 120 levels: target-encoded
    assert rich > numeric_only + 0.1


def test_target_encoding_is_cross_fitted_so_an_id_column_cannot_leak():
    features, target = customers(600)
    config = config_for(["x"], ["ticket"], families=["logistic"], trials=1, ensemble=False)
    result = run_search(features, target, config, storage=None, study_name="leak")
    assert result.high_cardinality == ["ticket"]
    pipeline = best_pipeline(result, config)
    # Fitting encodes each training row with the other folds' statistics: a ticket seen once
    # gets the prior, never its own label (a plain fit-then-transform would give AUC 1.0).
    encoded = pipeline.named_steps["preprocess"].fit_transform(features, target)
    ticket_column = encoded[:, 0]
    assert roc_auc_score(target, ticket_column) < 0.65
    # So out of fold the model is as good as the numeric signal allows, not near-perfect.
    with_ticket = roc_auc_score(target, out_of_fold_scores(pipeline, features, target, config))
    numeric = build_pipeline(
        "logistic", {}, numeric_columns=["x"], categorical_columns=[], task="classification"
    )
    numeric_only = roc_auc_score(target, out_of_fold_scores(numeric, features, target, config))
    assert with_ticket < 0.9
    assert abs(with_ticket - numeric_only) < 0.05


def test_search_blends_out_of_fold_and_reuses_its_predictions():
    features, target = customers(900, seed=1)
    config = config_for(
        ["x"],
        ["shop"],
        ["signed_up"],
        families=["logistic", "hist_gradient_boosting"],
        trials=4,
    )
    seen: list[dict] = []
    result = run_search(
        features, target, config, storage=None, study_name="b", on_trial=seen.append
    )
    assert result.ensemble_cv_score is not None
    assert seen[-1]["family"] == "ensemble" and seen[-1]["state"] in {"CHOSEN", "REJECTED"}
    if result.ensemble:
        assert result.champion_family == "ensemble"
        assert result.ensemble_cv_score > result.best_cv_score
        assert isinstance(best_pipeline(result, config), VotingClassifier)
    # The champion's out-of-fold predictions are the ones the search scored.
    scores = out_of_fold_scores(result, features, target, config)
    np.testing.assert_array_equal(scores, result.oof_predictions[:, 1])


@pytest.mark.slow  # an MLflow store and a pyfunc load
def test_a_blended_champion_round_trips_through_mlflow_with_skops(tmp_path, monkeypatch):
    features, target = customers(400, seed=2)
    config = config_for(["x"], ["shop", "ticket"], ["signed_up"])
    members = [
        {"trial": 0, "family": "logistic", "params": {"C": 1.0}, "weight": 2},
        {"trial": 1, "family": "hist_gradient_boosting", "params": {"max_iter": 30}, "weight": 1},
    ]
    result = SearchResult(
        best_family="logistic",
        best_params={"C": 1.0},
        best_cv_score=0.8,
        metric="roc_auc",
        direction="maximize",
        n_trials=2,
        n_complete=2,
        n_pruned=0,
        per_family_best={},
        trials=pd.DataFrame(),
        study_name="manual",
        ensemble=members,
        ensemble_cv_score=0.81,
        high_cardinality=["shop", "ticket"],
    )
    blend = fit_best(features, target, result, config)
    assert isinstance(blend, VotingClassifier) and list(blend.weights) == [2.0, 1.0]
    # The registered artifact wraps it with its decision threshold (issue 11): still one model.
    model = FixedThresholdClassifier(blend, threshold=0.3).fit(features, target)
    batch, _ = customers(50, seed=9)
    batch = prepare_features(batch, config)

    previous = mlflow.get_tracking_uri()
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # MLflow's setter also writes MLFLOW_TRACKING_URI: monkeypatch puts the variable back as
    # it was for the tests that follow (setting `previous` again would leave it set).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    try:
        with mlflow.start_run():
            logged = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(batch, model.predict(batch)),
                serialization_format="skops",
                skops_trusted_types=skops_trusted_types(model),
                pip_requirements=serving_requirements(),
            )
        restored = mlflow.sklearn.load_model(logged.model_uri)
        served = mlflow.pyfunc.load_model(logged.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)
    np.testing.assert_array_equal(restored.predict_proba(batch), model.predict_proba(batch))
    np.testing.assert_array_equal(np.asarray(served.predict(batch)), model.predict(batch))


def test_the_time_budget_bounds_the_whole_search():
    features, target = customers(1500)
    config = config_for(["x"], ["shop"], ["signed_up"], trials=10_000)
    started = time.perf_counter()
    result = run_search(features, target, config, storage=None, study_name="t", timeout=6)
    took = time.perf_counter() - started
    assert 2 <= result.n_trials < 10_000
    # Generous slack for a shared machine: one fold in flight plus the final bookkeeping.
    assert took < 6 + 6
    assert result.elapsed_seconds == pytest.approx(took, abs=1.0)


def test_logged_dates_rejoin_a_reference_that_holds_them_as_text(tmp_path):
    config = config_for([], [], ["signed_up"])
    reference = pd.DataFrame({"signed_up": ["2024-01-05", "2024-02-01 10:30"]})
    logged = prepare_features(pd.DataFrame({"signed_up": ["2024-03-09", None]}), config)
    assert logged["signed_up"].dtype.kind == "M"  # as the prediction log keeps them

    joined = pd.concat([reference, align_dtypes(logged, reference)], ignore_index=True)
    joined.to_parquet(tmp_path / "joined.parquet")  # one type per column again

    moments = prepare_features(joined, config)["signed_up"]
    assert moments.iloc[:3].tolist() == [
        pd.Timestamp("2024-01-05"),
        pd.Timestamp("2024-02-01 10:30"),
        pd.Timestamp("2024-03-09"),
    ]
    assert pd.isna(moments.iloc[3])
    assert align_dtypes(reference, logged)["signed_up"].dtype.kind == "M"


def test_a_blend_must_beat_the_best_single_model_by_more_than_fold_noise():
    from loopml.config import SearchConfig
    from loopml.search.ensemble import improves

    min_gain = SearchConfig().ensemble_min_gain  # the default

    best = 0.80
    assert not improves(best + 0.5 * min_gain * best, best, "roc_auc", by_share=min_gain)
    assert improves(best + 2 * min_gain * best, best, "roc_auc", by_share=min_gain)
    # Errors go the other way: a lower RMSE is the gain.
    assert improves(100 * (1 - 2 * min_gain), 100, "rmse", by_share=min_gain)
    assert not improves(100 * (1 - 0.5 * min_gain), 100, "rmse", by_share=min_gain)
    assert not improves(float("nan"), best, "roc_auc")
