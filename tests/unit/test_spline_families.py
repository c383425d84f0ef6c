"""Linear models with spline features: curves where the data bend, one skops-safe pipeline."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import skops.io
from sklearn.metrics import roc_auc_score, root_mean_squared_error
from threadpoolctl import threadpool_limits

from loopml.config import ProjectConfig
from loopml.errors import ConfigError
from loopml.explain import source_columns
from loopml.modeling import NumericSplines, build_pipeline, skops_trusted_types
from loopml.registry import TRUSTED_TYPE_PREFIXES
from loopml.search.fit import out_of_fold_scores
from loopml.search.study import run_search

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def one_native_thread():
    with threadpool_limits(limits=1):
        yield


def curved_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """``age`` acts as a U (risk high at both ends), plus a constant, a 0/1 flag and a column
    with gaps; ``y`` (binary) and ``amount`` (a sine of ``age``) are the targets."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(-3, 3, rows)
    gappy = rng.normal(size=rows)
    gappy[rng.random(rows) < 0.2] = np.nan
    flag = rng.integers(0, 2, rows)
    log_odds = 1.5 * (age**2 - 3) + 0.5 * flag
    return pd.DataFrame(
        {
            "age": age,
            "constant": 5.0,
            "flag": flag,
            "gappy": gappy,
            "y": (rng.random(rows) < 1 / (1 + np.exp(-log_odds))).astype(int),
            "amount": 10 * np.sin(age) + rng.normal(0, 1, rows),
        }
    )


NUMERIC = ["age", "constant", "flag", "gappy"]


def config_for(task: str, **search) -> ProjectConfig:
    classification = task == "classification"
    return ProjectConfig(
        name="splines",
        data="memory",
        target="y" if classification else "amount",
        task=task,
        positive_label=1 if classification else None,
        columns={"numeric": NUMERIC, "categorical": []},
        split={"cv_folds": 3, "random_state": 0},
        search={"timeout_seconds": None, **search},
    )


def test_splines_find_a_curve_a_straight_line_cannot():
    table = curved_table(900)
    config = config_for("classification")

    def oof_auc(family: str) -> float:
        pipeline = build_pipeline(
            family, {}, numeric_columns=NUMERIC, categorical_columns=[], task="classification"
        )
        return roc_auc_score(table["y"], out_of_fold_scores(pipeline, table, table["y"], config))

    assert oof_auc("logistic") < 0.65
    assert oof_auc("logistic_spline") > 0.8


def test_ridge_splines_follow_a_sine():
    train, test = curved_table(600), curved_table(300, seed=1)

    def test_rmse(family: str) -> float:
        pipeline = build_pipeline(
            family, {}, numeric_columns=NUMERIC, categorical_columns=[], task="regression"
        )
        pipeline.fit(train, train["amount"])
        return root_mean_squared_error(test["amount"], pipeline.predict(test))

    assert test_rmse("ridge_spline") < 0.5 * test_rmse("ridge")


def test_constant_flag_and_missing_columns_pass_through_unsplined():
    table = curved_table(400)
    pipeline = build_pipeline(
        "logistic_spline",
        {},
        numeric_columns=NUMERIC,
        categorical_columns=[],
        task="classification",
    )
    pipeline.fit(table, table["y"])
    numeric = pipeline.named_steps["preprocess"].named_transformers_["numeric"]
    splines, names = numeric["splines"], list(numeric[:-1].get_feature_names_out())
    assert [names[i] for i in splines.splined_columns_] == ["age", "gappy"]
    assert "missingindicator_gappy" in names  # the indicator itself is a 0/1 column: unsplined

    # Gaps, values far outside the training range and text that is no number all score.
    fresh = table.head(4).copy()
    fresh["age"] = [np.nan, -50.0, 50.0, 0.0]
    fresh["gappy"] = fresh["gappy"].astype(object)
    fresh.loc[fresh.index[3], "gappy"] = " "
    probabilities = pipeline.predict_proba(fresh)
    assert np.isfinite(probabilities).all()
    # Linear extrapolation: ages far beyond the U's arms are even surer positives.
    assert probabilities[1, 1] > 0.9 and probabilities[2, 1] > 0.9


def test_every_model_input_traces_back_to_its_table_column():
    table = curved_table(300)
    pipeline = build_pipeline(
        "ridge_spline", {}, numeric_columns=NUMERIC, categorical_columns=[], task="regression"
    )
    pipeline.fit(table, table["amount"])
    preprocess = pipeline.named_steps["preprocess"]
    sources = source_columns(preprocess, list(table.columns))
    outputs = preprocess.transform(table)
    assert len(sources) == outputs.shape[1]
    assert sources.count("age") == 1 + 6  # the column and its 5-knot cubic basis (no bias)
    assert sources.count("constant") == 1 and sources.count("flag") == 1


@pytest.mark.parametrize(
    ("family", "task", "target"),
    [("logistic_spline", "classification", "y"), ("ridge_spline", "regression", "amount")],
)
def test_spline_pipeline_round_trips_through_skops(family, task, target):
    table = curved_table(300)
    pipeline = build_pipeline(
        family,
        {"C": 0.5} if task == "classification" else {"alpha": 3.0},
        numeric_columns=NUMERIC,
        categorical_columns=[],
        task=task,
    )
    pipeline.fit(table, table[target])
    trusted = skops_trusted_types(pipeline)
    assert all(kind.startswith(TRUSTED_TYPE_PREFIXES) for kind in trusted)
    assert "loopml.modeling.NumericSplines" in trusted
    loaded = skops.io.loads(skops.io.dumps(pipeline), trusted=trusted)
    np.testing.assert_allclose(loaded.predict(table), pipeline.predict(table))


def test_splines_alone_with_nothing_to_curve_are_the_identity():
    gaps = np.linspace(0.0, 1.0, 50)
    gaps[::7] = np.nan  # not imputed: passed through as it is, NaN and all
    values = np.column_stack([np.zeros(50), np.tile([0.0, 1.0], 25), gaps])
    splines = NumericSplines().fit(values)
    assert splines.splines_ is None and len(splines.splined_columns_) == 0
    np.testing.assert_array_equal(splines.transform(values), values)
    with pytest.raises(ValueError, match="expecting 3 features"):
        splines.transform(values[:, :1])


def test_a_configured_spline_family_is_searched_and_fits_its_task():
    table = curved_table(600)
    config = config_for("classification", families=["logistic", "logistic_spline"], trials=4)
    result = run_search(table, table["y"], config, storage=None, study_name="splines")
    assert set(result.per_family_best) == {"logistic", "logistic_spline"}
    assert result.best_family == "logistic_spline"
    assert "C" in result.best_params
    with pytest.raises(ConfigError, match="ridge_spline"):
        run_search(
            table,
            table["y"],
            config_for("classification", families=["ridge_spline"]),
            storage=None,
            study_name="unsuited",
        )
