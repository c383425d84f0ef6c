"""Held-out metrics, threshold choice, importances and figures."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from loopml.config import ProjectConfig
from loopml.errors import ConfigError
from loopml.evaluation import (
    choose_threshold,
    evaluate,
    evaluation_figures,
    permutation_importances,
)
from loopml.metrics import metric_direction
from loopml.modeling import build_pipeline, inner_pipeline, with_threshold


@pytest.fixture(autouse=True)
def one_native_thread():
    with threadpool_limits(limits=1):
        yield


def make_config(task: str, **extra) -> ProjectConfig:
    return ProjectConfig(
        name="evaluation",
        data="memory",
        target="y",
        task=task,
        columns={"numeric": ["signal", "noise"], "categorical": ["segment"]},
        **extra,
    )


def table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "signal": rng.normal(size=rows),
            "noise": rng.normal(size=rows),
            "segment": rng.choice(["a", "b", "c"], rows),
        }
    )


def binary_target(frame: pd.DataFrame, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed + 100)
    logit = 2.5 * frame["signal"] + (frame["segment"] == "a") * 1.0
    return pd.Series(np.where(rng.random(len(frame)) < 1 / (1 + np.exp(-logit)), "Yes", "No"))


def multiclass_target(frame: pd.DataFrame) -> pd.Series:
    bins = np.digitize(frame["signal"], [-0.5, 0.5])
    return pd.Series(np.array(["low", "mid", "high"])[bins])


def regression_target(frame: pd.DataFrame, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed + 100)
    return 3 * frame["signal"] + (frame["segment"] == "b") * 2 + rng.normal(0, 0.5, len(frame))


def fitted(family: str, config: ProjectConfig, features: pd.DataFrame, target: pd.Series):
    return build_pipeline(
        family,
        {},
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task=config.task,
        random_state=0,
    ).fit(features, target)


@pytest.fixture(scope="module")
def binary_case():
    config = make_config("classification", positive_label="Yes")
    train, test = table(800, 1), table(400, 2)
    model = fitted("logistic", config, train, binary_target(train, 1))
    return config, model, test, binary_target(test, 2)


def test_binary_metrics_and_threshold_effect(binary_case):
    config, model, features, target = binary_case
    metrics = evaluate(model, features, target, config)
    assert set(metrics) == {
        "roc_auc",
        "pr_auc",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "log_loss",
    }
    assert metrics["roc_auc"] > 0.85
    assert 0 < metrics["log_loss"] < 0.6
    strict = evaluate(with_threshold(model, 0.95, "Yes"), features, target, config)
    assert strict["recall"] < metrics["recall"]
    assert strict["precision"] >= metrics["precision"]
    assert strict["roc_auc"] == metrics["roc_auc"]  # ranking metrics ignore the threshold


def test_positive_label_is_respected_not_alphabetical_order(binary_case):
    config, model, features, target = binary_case
    flipped = make_config("classification", positive_label="No")
    as_yes = evaluate(model, features, target, config)
    as_no = evaluate(model, features, target, flipped)
    assert as_no["roc_auc"] == pytest.approx(as_yes["roc_auc"])
    # Precision of "No" predictions is not the precision of "Yes" predictions.
    assert as_no["precision"] != pytest.approx(as_yes["precision"])
    assert as_no["pr_auc"] != pytest.approx(as_yes["pr_auc"])


def test_search_and_gate_metrics_are_always_included(binary_case):
    _, model, features, target = binary_case
    config = make_config(
        "classification", positive_label="Yes", search={"metric": "balanced_accuracy"}
    )
    metrics = evaluate(model, features, target, config)
    assert 0.5 < metrics["balanced_accuracy"] <= 1
    # A metric the task has not is refused when the config is built (load_config: ConfigError).
    with pytest.raises(ValueError, match="search.metric: metric 'rmse' cannot be computed"):
        make_config("classification", positive_label="Yes", search={"metric": "rmse"})


def test_multiclass_metrics():
    config = make_config("classification", classes=["low", "mid", "high"])
    train, test = table(600, 3), table(300, 4)
    model = fitted("hist_gradient_boosting", config, train, multiclass_target(train))
    metrics = evaluate(model, test, multiclass_target(test), config)
    assert set(metrics) == {"accuracy", "f1_macro", "log_loss", "roc_auc_ovr"}
    assert metrics["accuracy"] > 0.85 and metrics["roc_auc_ovr"] > 0.9
    # A label the model never saw still gives finite metrics instead of an exception.
    target = multiclass_target(test).where(test.index > 5, "brand_new")
    with_unseen = evaluate(model, test, target, config)
    assert math.isfinite(with_unseen["log_loss"]) and with_unseen["log_loss"] > metrics["log_loss"]


def test_regression_metrics():
    config = make_config("regression")
    train, test = table(600, 5), table(300, 6)
    model = fitted("ridge", config, train, regression_target(train, 5))
    metrics = evaluate(model, test, regression_target(test, 6), config)
    assert set(metrics) == {"rmse", "mae", "r2"}
    assert metrics["rmse"] == pytest.approx(0.5, abs=0.1)
    assert metrics["mae"] < metrics["rmse"] and metrics["r2"] > 0.95


def test_choose_threshold_separates_clean_scores():
    labels = np.array(["No"] * 6 + ["Yes"] * 4)
    scores = np.array([0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    for objective in ("f1", "youden", "accuracy", "balanced_accuracy"):
        assert choose_threshold(labels, scores, "Yes", objective=objective) == pytest.approx(0.6)
    # Positive "No": low scores would be "No"-probabilities, so the best cut moves.
    assert choose_threshold(labels, 1 - scores, "No") == pytest.approx(0.5)
    assert choose_threshold(["Yes", "Yes"], [0.2, 0.3], "Yes") == 0.5
    with pytest.raises(ConfigError):
        choose_threshold(labels, scores, "Yes", objective="profit")


def test_choose_threshold_favours_recall_for_rare_positives():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(900, dtype=int), np.ones(100, dtype=int)]
    scores = np.r_[rng.beta(2, 8, 900), rng.beta(4, 4, 100)]
    threshold = choose_threshold(labels, scores, 1)
    assert 0.2 < threshold < 0.6
    predicted = scores >= threshold
    f1_at_choice = 2 * (predicted & (labels == 1)).sum() / (predicted.sum() + 100)
    predicted_half = scores >= 0.5
    f1_at_half = 2 * (predicted_half & (labels == 1)).sum() / (predicted_half.sum() + 100)
    assert f1_at_choice >= f1_at_half


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("roc_auc", "maximize"),
        ("f1_macro", "maximize"),
        ("r2", "maximize"),
        ("rmse", "minimize"),
        ("mae", "minimize"),
        ("log_loss", "minimize"),
    ],
)
def test_metric_direction(metric, direction):
    assert metric_direction(metric) == direction


def test_the_threshold_inside_the_model_gives_its_labels(binary_case):
    """predict of the wrapped model is the positive-class probability cut at the threshold."""
    config, model, features, _ = binary_case
    wrapped = with_threshold(model, 0.3, "yes")  # the label rule finds the class "Yes"
    scores = model.predict_proba(features)[:, list(model.classes_).index("Yes")]

    assert wrapped.pos_label == "Yes"
    np.testing.assert_array_equal(wrapped.predict(features), np.where(scores >= 0.3, "Yes", "No"))
    assert inner_pipeline(wrapped) is model and inner_pipeline(model) is model


def test_permutation_importances_rank_the_signal(binary_case):
    config, model, features, target = binary_case
    importances = permutation_importances(model, features, target, config, n_repeats=2)
    assert list(importances)[0] == "signal"  # sorted, most important first
    assert set(importances) == {"signal", "noise", "segment"}
    assert importances["signal"] > 0.1 > abs(importances["noise"])


def _png_bytes(figure: Figure) -> int:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return len(buffer.getvalue())


def test_binary_figures(binary_case):
    config, model, features, target = binary_case
    figures = evaluation_figures(with_threshold(model, 0.4, "Yes"), features, target, config)
    assert set(figures) == {
        "roc_curve",
        "pr_curve",
        "confusion_matrix",
        "calibration",
        "permutation_importance",
    }
    assert all(
        isinstance(figure, Figure) and _png_bytes(figure) > 1000 for figure in figures.values()
    )


def test_multiclass_and_regression_figures():
    config = make_config("classification", classes=["low", "mid", "high"])
    frame = table(300, 7)
    model = fitted("random_forest", config, frame, multiclass_target(frame))
    figures = evaluation_figures(model, frame, multiclass_target(frame), config)
    assert set(figures) == {"confusion_matrix", "permutation_importance"}

    config = make_config("regression")
    model = fitted("hist_gradient_boosting", config, frame, regression_target(frame, 7))
    importances = {"signal": 2.0, "segment": 0.5, "noise": 0.0}
    figures = evaluation_figures(
        model, frame, regression_target(frame, 7), config, importances=importances
    )
    assert set(figures) == {"predicted_vs_actual", "residuals", "permutation_importance"}
    assert all(_png_bytes(figure) > 1000 for figure in figures.values())


@pytest.mark.parametrize("n_repeats", [1, 3])
def test_permutation_importances_equal_scikit_learns(binary_case, n_repeats):
    """Scored in batches, the shuffles and values are still scikit-learn's own."""
    from sklearn.inspection import permutation_importance

    from loopml.evaluation import metric_scorer

    config, model, features, target = binary_case
    ours = permutation_importances(
        model, features, target, config, n_repeats=n_repeats, random_state=7
    )
    columns = [column for column in config.columns.features if column in features.columns]
    theirs = permutation_importance(
        model,
        features[columns],
        np.asarray(target),
        scoring=metric_scorer(config),
        n_repeats=n_repeats,
        random_state=7,
    )
    expected = dict(zip(columns, theirs.importances_mean, strict=True))
    assert ours == pytest.approx(expected, abs=1e-12)


def test_permutation_importances_in_many_calls_equal_one_call(binary_case, monkeypatch):
    """Wide tables are scored in several calls (bounded memory); the values do not change."""
    import loopml.evaluation as evaluation

    config, model, features, target = binary_case
    whole = permutation_importances(model, features, target, config, random_state=3)
    monkeypatch.setattr(evaluation, "PERMUTATION_CELLS_PER_CALL", features.size // 2)
    assert permutation_importances(model, features, target, config, random_state=3) == whole
