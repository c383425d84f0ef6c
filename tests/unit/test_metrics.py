"""One metrics module: every accepted metric, computed the same way by training and monitoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skmetrics

from loopml import metrics
from loopml.config import ProjectConfig
from loopml.monitoring import batch_metrics, batch_outcomes, judge_performance, performance_verdict


def _config(task: str = "classification", **extra) -> ProjectConfig:
    if task == "classification" and "classes" not in extra:
        extra.setdefault("positive_label", "Yes")
    return ProjectConfig(
        name="metrics", data="memory", target="y", task=task, columns={"numeric": ["x"]}, **extra
    )


def _binary_batch(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, thresholded predictions and scores of a model with a ROC-AUC near 0.84."""
    generator = np.random.default_rng(seed)
    truth = generator.random(rows) < 0.3
    score = np.clip(truth * 0.35 + generator.normal(0.35, 0.2, rows), 0, 1)
    return truth, score >= 0.5, score


def _text_batch(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth, predicted, score = _binary_batch(rows, seed)
    return np.where(truth, "Yes", "No"), np.where(predicted, "Yes", "No"), score


# --------------------------------------------------------------------------- definitions


SKLEARN_BINARY = {
    "roc_auc": lambda t, p, s: skmetrics.roc_auc_score(t, s),
    "pr_auc": lambda t, p, s: skmetrics.average_precision_score(t, s),
    "accuracy": lambda t, p, s: skmetrics.accuracy_score(t, p),
    "balanced_accuracy": lambda t, p, s: skmetrics.balanced_accuracy_score(t, p),
    "precision": lambda t, p, s: skmetrics.precision_score(t, p, zero_division=0),
    "recall": lambda t, p, s: skmetrics.recall_score(t, p, zero_division=0),
    "f1": lambda t, p, s: skmetrics.f1_score(t, p, zero_division=0),
    "f1_macro": lambda t, p, s: skmetrics.f1_score(t, p, average="macro", zero_division=0),
    "log_loss": lambda t, p, s: skmetrics.log_loss(t, s),
    "brier": lambda t, p, s: skmetrics.brier_score_loss(t, s),
}


@pytest.mark.parametrize("metric", metrics.supported_metrics("binary"))
def test_every_binary_metric_equals_scikit_learns(metric):
    truth, predicted, score = _binary_batch(500, seed=1)

    value = metrics.compute([metric], metrics.binary_outcomes(truth, predicted, True, score))

    assert value[metric] == pytest.approx(SKLEARN_BINARY[metric](truth, predicted, score))


@pytest.mark.parametrize("decimals", [0, 1, 2, 6])
def test_roc_auc_counts_tied_scores_half_as_scikit_learn_does(decimals):
    truth, predicted, score = _binary_batch(700, seed=decimals)
    tied = np.round(score, decimals)  # runs of equal scores, up to two distinct values

    value = metrics.compute(["roc_auc"], metrics.binary_outcomes(truth, predicted, True, tied))

    assert value["roc_auc"] == pytest.approx(skmetrics.roc_auc_score(truth, tied), abs=1e-12)


def test_roc_auc_of_a_missing_score_is_nan():
    truth, predicted, score = _binary_batch(50, seed=3)
    score[7] = np.nan

    value = metrics.compute(["roc_auc"], metrics.binary_outcomes(truth, predicted, True, score))

    assert np.isnan(value["roc_auc"])


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("rmse", skmetrics.root_mean_squared_error),
        ("mae", skmetrics.mean_absolute_error),
        ("mse", skmetrics.mean_squared_error),
        ("mape", skmetrics.mean_absolute_percentage_error),
        ("r2", skmetrics.r2_score),
    ],
)
def test_every_regression_metric_equals_scikit_learns(metric, expected):
    generator = np.random.default_rng(4)
    truth = generator.normal(100, 20, 500)
    predicted = truth + generator.normal(0, 8, 500)

    value = metrics.compute([metric], metrics.regression_outcomes(truth, predicted))

    assert value[metric] == pytest.approx(expected(truth, predicted))


def test_every_metric_has_a_direction_and_a_scale():
    assert metrics.metric_direction("roc_auc") == "maximize"
    assert metrics.metric_direction("brier") == "minimize"
    assert metrics.is_bounded("brier") and metrics.is_bounded("r2")
    assert not metrics.is_bounded("rmse") and not metrics.is_bounded("log_loss")
    for kind in ("binary", "multiclass", "regression"):
        assert metrics.default_metric(kind) in metrics.supported_metrics(kind)
        assert set(metrics.REPORTED_METRICS[kind]) <= set(metrics.supported_metrics(kind))


def test_a_single_class_batch_leaves_out_what_is_undefined_there():
    truth = np.array(["No"] * 40)
    predicted = np.array(["No"] * 38 + ["Yes"] * 2)
    scores = np.array([0.1] * 38 + [0.7] * 2)

    values = batch_metrics(batch_outcomes(_config(), truth, predicted, scores))

    assert "roc_auc" not in values and "pr_auc" not in values
    assert values["accuracy"] == pytest.approx(0.95)
    assert math.isfinite(values["log_loss"]) and math.isfinite(values["brier"])


@pytest.mark.parametrize(
    ("truth", "predicted"),
    [
        pytest.param(
            np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2], dtype=object), id="object-ints"
        ),
        pytest.param(np.array([0, 1, 2, 2]), np.array(["0", "1", "1", "2"]), id="ints-vs-text"),
        pytest.param(np.array([0.0, 1.0, 2.0, 2.0]), np.array([0, 1, 1, 2]), id="floats-vs-ints"),
    ],
)
def test_multiclass_labels_read_back_in_another_dtype_are_still_compared(truth, predicted):
    """Integer classes come back from CSV, Parquet and the prediction log as object arrays, text
    or floats; scikit-learn refuses such mixes ('unknown' target type), loopml compares them."""
    config = _config(classes=[0, 1, 2])

    values = batch_metrics(batch_outcomes(config, truth, predicted))

    assert values["accuracy"] == pytest.approx(0.75)
    assert set(values) == {
        "accuracy",
        "balanced_accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
    }


def test_binary_positive_label_matches_by_value_or_text():
    values = batch_metrics(
        batch_outcomes(
            _config(positive_label=1),
            np.array(["1", "0", "1", "0"], dtype=object),
            np.array([1, 0, 0, 0]),
            np.array([0.9, 0.1, 0.4, 0.2]),
        )
    )

    assert values["recall"] == pytest.approx(0.5)
    assert values["roc_auc"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("task", "extra", "field"),
    [
        ("classification", {"search": {"metric": "rmse"}}, "search.metric"),
        ("regression", {"gate": {"metric": "roc_auc"}}, "gate.metric"),
        ("classification", {"search": {"metric": "auc"}}, "search.metric"),
        (
            "classification",
            {"classes": ["a", "b", "c"], "monitoring": {"performance": {"metric": "log_loss"}}},
            "monitoring.performance.metric",
        ),
    ],
)
def test_the_config_refuses_a_metric_it_cannot_compute(task, extra, field):
    with pytest.raises(ValueError, match=f"{field}: metric"):
        _config(task, **extra)


def test_the_default_metric_rule_is_one_rule():
    assert _config().search_metric == _config().performance_metric == "roc_auc"
    multiclass = _config(classes=["a", "b", "c"])
    assert multiclass.search_metric == multiclass.performance_metric == "f1_macro"
    assert _config("regression").performance_metric == "rmse"
    assert _config("regression").monitoring.performance.max_drop == 0.15
    assert _config().monitoring.performance.max_drop == 0.05


# --------------------------------------------------------------------------- monitoring


@pytest.mark.parametrize("metric", metrics.monitorable_metrics("binary"))
def test_every_binary_metric_gets_a_real_performance_verdict(metric):
    """balanced_accuracy, brier, f1_macro ... each judged, with its noise, by monitoring."""
    config = _config(monitoring={"performance": {"metric": metric}})
    truth, predicted, score = _text_batch(400, seed=2)
    reference = metrics.compute([metric], metrics.binary_outcomes(truth, predicted, "Yes", score))

    verdict = judge_performance(config, reference, truth, predicted, score)

    assert verdict["metric"] == metric and "note" not in verdict
    assert verdict["drop"] == pytest.approx(0.0, abs=1e-12)
    assert verdict["degraded"] is False
    assert verdict["standard_error"] > 0


@pytest.mark.parametrize("metric", metrics.monitorable_metrics("multiclass"))
def test_every_monitorable_multiclass_metric_gets_a_verdict(metric):
    generator = np.random.default_rng(5)
    truth = generator.choice(["a", "b", "c"], 300)
    predicted = np.where(generator.random(300) < 0.7, truth, generator.choice(["a", "b"], 300))
    config = _config(classes=["a", "b", "c"], monitoring={"performance": {"metric": metric}})

    verdict = judge_performance(config, {metric: 1.0}, truth, predicted)

    assert "note" not in verdict and verdict["drop"] > 0 and verdict["standard_error"] > 0


@pytest.mark.parametrize("metric", metrics.monitorable_metrics("regression"))
def test_every_regression_metric_gets_a_verdict(metric):
    generator = np.random.default_rng(6)
    truth = generator.normal(100, 20, 300)
    predicted = truth + generator.normal(0, 8, 300)
    config = _config("regression", monitoring={"performance": {"metric": metric}})
    reference = metrics.compute([metric], metrics.regression_outcomes(truth, predicted))

    verdict = judge_performance(config, reference, truth, predicted)

    assert "note" not in verdict and verdict["drop"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- sampling noise


@pytest.mark.parametrize("rows", [400, 200_000])
def test_the_standard_error_of_accuracy_is_the_binomial_one(rows):
    """sqrt(p(1-p)/n), also when a large batch is resampled at 20k rows and scaled."""
    generator = np.random.default_rng(rows)
    truth = generator.random(rows) < 0.5
    predicted = np.where(generator.random(rows) < 0.8, truth, ~truth)  # 80% right
    accuracy = float(np.mean(truth == predicted))

    error = metrics.standard_error("accuracy", metrics.binary_outcomes(truth, predicted, True))

    assert error == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / rows), rel=0.15)


def test_a_single_class_batch_has_no_auc_noise():
    truth = np.zeros(100, dtype=bool)
    outcomes = metrics.binary_outcomes(truth, truth, True, np.linspace(0, 1, 100))

    assert metrics.standard_error("roc_auc", outcomes) is None


def test_clean_small_labelled_batches_raise_fewer_false_degradations_with_the_noise_guard():
    """60 labelled rows of an unchanged model: AUC alone dips past max_drop 0.05 in roughly a
    batch in five; a drop that must also clear its sampling noise rarely does."""
    truth, predicted, score = _binary_batch(20_000, seed=0)
    reference = metrics.compute(["roc_auc"], metrics.binary_outcomes(truth, predicted, True, score))
    plain, guarded = 0, 0
    for seed in range(1, 31):
        truth, predicted, score = _binary_batch(60, seed=seed)
        outcomes = metrics.binary_outcomes(truth, predicted, True, score)
        current = metrics.defined(outcomes)
        error = metrics.standard_error("roc_auc", outcomes, resamples=100)
        common = {"metric": "roc_auc", "max_drop": 0.05, "rows": 60, "min_rows": 50}
        plain += performance_verdict(current, reference, **common)["degraded"]
        guarded += performance_verdict(
            current, reference, **common, standard_error=error, alpha=0.05
        )["degraded"]

    assert plain >= 3
    assert guarded <= 2


def test_a_real_drop_is_still_degraded_with_the_noise_guard():
    verdict = performance_verdict(
        {"roc_auc": 0.70}, {"roc_auc": 0.84}, metric="roc_auc", max_drop=0.05, rows=500,
        min_rows=50, standard_error=0.02, alpha=0.05,
    )  # fmt: skip
    noisy = performance_verdict(
        {"roc_auc": 0.76}, {"roc_auc": 0.84}, metric="roc_auc", max_drop=0.05, rows=60,
        min_rows=50, standard_error=0.06, alpha=0.05,
    )  # fmt: skip

    assert verdict["degraded"] is True
    assert verdict["noise_bound"] == pytest.approx(1.645 * 0.02, rel=1e-3)
    assert noisy["degraded"] is False
    assert "sampling noise of 60 labelled rows" in noisy["note"]
