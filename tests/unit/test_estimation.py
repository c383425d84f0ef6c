"""CBPE and DLE against the published definitions, on synthetic data whose performance is known.

Scores drawn uniform on [0, 1] with labels drawn Bernoulli(score) are perfectly calibrated; their
population ROC-AUC is 5/6 (P(s+ > s-) with densities 2s and 2(1 - s)) and the accuracy of the
0.5 cut is 3/4. Covariate shift moves the scores; concept drift changes P(y | score).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from loopml.config import ProjectConfig
from loopml.estimation.calibration import apply_calibration, fit_calibration, select_calibration
from loopml.estimation.estimator import PerformanceEstimator
from loopml.estimation.expected_metrics import expected_binary_metrics, expected_roc_auc
from loopml.estimation.fit import fit_estimator
from loopml.estimation.outputs import ModelOutputs
from loopml.estimation.store import EstimateStore, estimate_record, realised_record
from loopml.estimation.verdict import estimated_verdict
from loopml.estimation.versions import load_version_estimator


def _config(task: str, **extra) -> ProjectConfig:
    return ProjectConfig.model_validate(
        {
            "name": "synthetic",
            "data": "x.csv",
            "target": "y",
            "task": task,
            "columns": {"numeric": ["x"], "categorical": ["c"]},
            **extra,
        }
    )


def _binary_outputs(scores: np.ndarray) -> ModelOutputs:
    labels = np.where(scores >= 0.5, "yes", "no")
    return ModelOutputs(labels, np.column_stack([1 - scores, scores]), ["no", "yes"])


def test_expected_metrics_of_calibrated_uniform_scores_are_the_known_values():
    scores = np.random.default_rng(0).random(200_000)

    expected = expected_binary_metrics(scores, scores, scores >= 0.5)

    assert expected["roc_auc"] == pytest.approx(5 / 6, abs=0.003)
    assert expected["accuracy"] == pytest.approx(0.75, abs=0.003)
    assert expected["precision"] == pytest.approx(0.75, abs=0.003)


def test_expected_roc_auc_counts_tied_scores_as_half_like_the_realised_one():
    scores = np.array([0.2, 0.2, 0.8, 0.8])
    # Labels fixed (p in {0, 1}): the expected AUC is the realised AUC, ties included.
    labels = np.array([0.0, 1.0, 0.0, 1.0])

    assert expected_roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_expected_roc_auc_is_expected_concordant_pairs_over_expected_pairs():
    """Exact, by enumerating all 2^8 label sets: a row is never paired with itself."""
    import itertools

    rng = np.random.default_rng(5)
    scores, probabilities = rng.random(8), rng.random(8)
    concordant = pairs = 0.0
    for labels in itertools.product([False, True], repeat=8):
        truth = np.array(labels)
        weight = np.prod(np.where(truth, probabilities, 1 - probabilities))
        above = scores[truth][:, None] > scores[~truth][None, :]
        concordant += weight * above.sum()
        pairs += weight * truth.sum() * (~truth).sum()

    assert expected_roc_auc(scores, probabilities) == pytest.approx(concordant / pairs, rel=1e-9)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))


def _overconfident(scores: np.ndarray) -> np.ndarray:
    """The true P(y | score) of a model whose logits are 1/0.6 too large (and shifted)."""
    return _sigmoid(0.6 * np.log(scores / (1 - scores)) - 0.3)


def test_cross_validated_calibration_picks_the_sigmoid_for_overconfident_scores():
    chosen = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        scores = np.clip(rng.beta(1, 3, 800), 1e-4, 1 - 1e-4)
        outcomes = (rng.random(800) < _overconfident(scores)).astype(float)
        chosen.append(select_calibration(scores, outcomes))

    assert chosen.count("sigmoid") >= 8  # a sample can still favour isotonic's flexibility


def test_already_calibrated_scores_are_left_alone():
    rng = np.random.default_rng(6)
    scores = rng.random(3_000)
    outcomes = (rng.random(3_000) < scores).astype(float)

    knots = fit_calibration(scores, outcomes)

    assert knots["method"] in ("identity", "sigmoid")
    calibrated = apply_calibration(scores, knots)
    assert np.max(np.abs(calibrated - scores)) < 0.05


def test_the_chosen_calibration_estimates_a_shifted_auc_better_than_isotonic_steps():
    """800 held-out rows skewed to low scores, batches shifted towards the sparse high ones:
    isotonic's coarse steps there cost accuracy that the two-parameter sigmoid keeps."""
    errors = {"chosen": [], "isotonic": []}
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scores = np.clip(rng.beta(1, 3, 800), 1e-4, 1 - 1e-4)
        outcomes = (rng.random(800) < _overconfident(scores)).astype(float)
        maps = {
            "chosen": fit_calibration(scores, outcomes),
            "isotonic": fit_calibration(scores, outcomes, "isotonic"),
        }
        batch = np.clip(rng.beta(2, 2, 500), 1e-4, 1 - 1e-4)
        truth = expected_roc_auc(batch, _overconfident(batch))
        for name, knots in maps.items():
            calibrated = apply_calibration(batch, knots)
            errors[name].append(abs(expected_roc_auc(batch, calibrated) - truth))

    assert np.mean(errors["chosen"]) < 0.03
    assert np.mean(errors["chosen"]) < 0.6 * np.mean(errors["isotonic"])


def test_a_sigmoid_calibrated_estimator_survives_a_round_trip_and_old_maps_stay_isotonic(
    tmp_path,
):
    rng = np.random.default_rng(7)
    config = _config("classification", positive_label="yes")
    scores = np.clip(rng.beta(1, 3, 1_500), 1e-4, 1 - 1e-4)
    truth = np.where(rng.random(1_500) < _overconfident(scores), "yes", "no")
    estimator = fit_estimator(config, _binary_outputs(scores), pd.Series(truth), pd.DataFrame(), {})
    assert estimator.calibration[0]["method"] == "sigmoid"
    assert {maps[0]["method"] for maps in estimator.calibration_resamples} == {"sigmoid"}
    batch = _binary_outputs(rng.random(500))

    loaded = PerformanceEstimator.load(estimator.save(tmp_path)[0].parent)

    assert loaded.estimate(batch, metric="roc_auc") == estimator.estimate(batch, metric="roc_auc")
    # A map stored before the method was recorded: isotonic knots, interpolated.
    assert apply_calibration(
        np.array([0.25, 0.75]), {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.2, 1.0]}
    ) == pytest.approx([0.1, 0.6])


def test_too_few_rows_of_a_class_to_cross_validate_fall_back_to_isotonic():
    scores = np.linspace(0.01, 0.99, 40)
    outcomes = np.zeros(40)
    outcomes[-1] = 1.0

    assert select_calibration(scores, outcomes) == "isotonic"
    assert apply_calibration(scores, fit_calibration(scores, outcomes))[-1] == pytest.approx(1.0)


def test_interval_holds_the_realised_auc_of_calibrated_batches_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    estimator = PerformanceEstimator(
        method="cbpe",
        task="classification",
        classes=["no", "yes"],
        positive_index=1,
        calibration=[{"x": [0.0, 1.0], "y": [0.0, 1.0]}],  # identity: already calibrated
    )
    held = []
    for _ in range(60):
        scores = rng.random(500)
        truth = rng.random(500) < scores
        entry = estimator.estimate(_binary_outputs(scores), metric="roc_auc")["roc_auc"]
        realised = roc_auc_score(truth, scores)
        held.append(entry["lower"] <= realised <= entry["upper"])
        assert entry["lower"] <= entry["value"] <= entry["upper"]
    assert 0.88 <= np.mean(held) <= 1.0


def test_calibration_fixes_overconfident_scores_under_covariate_shift():
    """The model says s, the truth is P(y) = s**2; the batch has more high scores."""
    rng = np.random.default_rng(2)
    config = _config("classification", positive_label="yes")
    held_scores = rng.random(3_000)
    held_truth = np.where(rng.random(3_000) < held_scores**2, "yes", "no")
    estimator = fit_estimator(
        config, _binary_outputs(held_scores), pd.Series(held_truth), pd.DataFrame(), {}
    )

    errors, raw_errors = [], []
    for _ in range(20):
        scores = rng.beta(3, 1, 500)  # shifted towards high scores
        truth = rng.random(500) < scores**2
        outputs = _binary_outputs(scores)
        estimated = estimator.estimate_metrics(outputs)
        errors.append(abs(estimated["accuracy"] - np.mean((scores >= 0.5) == truth)))
        uncalibrated = expected_binary_metrics(scores, scores, scores >= 0.5)
        raw_errors.append(abs(uncalibrated["accuracy"] - np.mean((scores >= 0.5) == truth)))
    assert np.mean(errors) < 0.03
    assert np.mean(raw_errors) > 2 * np.mean(errors)  # calibration is what makes it hold


def test_concept_drift_is_invisible_to_cbpe():
    """Same scores, reversed relation: the realised AUC collapses, the estimate does not."""
    rng = np.random.default_rng(3)
    estimator = PerformanceEstimator(
        method="cbpe",
        task="classification",
        classes=["no", "yes"],
        positive_index=1,
        calibration=[{"x": [0.0, 1.0], "y": [0.0, 1.0]}],
    )
    scores = rng.random(2_000)
    truth = rng.random(2_000) < 1 - scores

    estimate = estimator.estimate(_binary_outputs(scores), metric="roc_auc")["roc_auc"]

    assert estimate["value"] > 0.8 and roc_auc_score(truth, scores) < 0.2


def test_multiclass_expected_accuracy_matches_realised_on_calibrated_probabilities():
    rng = np.random.default_rng(4)
    config = _config("classification", classes=["a", "b", "c"])
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], 4_000)
    draw = lambda p: np.array(  # noqa: E731
        ["a", "b", "c"]
    )[(rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=2)]
    labels = np.array(["a", "b", "c"])[probabilities.argmax(axis=1)]
    outputs = ModelOutputs(labels, probabilities, ["a", "b", "c"])
    estimator = fit_estimator(config, outputs, pd.Series(draw(probabilities)), pd.DataFrame(), {})

    batch = rng.dirichlet([3.0, 1.0, 1.0], 1_000)
    batch_labels = np.array(["a", "b", "c"])[batch.argmax(axis=1)]
    estimates = estimator.estimate(
        ModelOutputs(batch_labels, batch, ["a", "b", "c"]), metric="f1_macro"
    )

    realised = np.mean(draw(batch) == batch_labels)
    assert estimates["accuracy"]["value"] == pytest.approx(batch.max(axis=1).mean(), abs=0.03)
    assert (
        estimates["accuracy"]["lower"] - 0.02 <= realised <= estimates["accuracy"]["upper"] + 0.02
    )
    assert 0 < estimates["f1_macro"]["lower"] < estimates["f1_macro"]["upper"] < 1


def test_dle_estimates_mae_of_a_heteroscedastic_regression_and_survives_a_round_trip(tmp_path):
    """Errors grow with |x| and differ by category; the batch moves towards large |x|."""
    rng = np.random.default_rng(5)
    config = _config("regression")

    def table(rows: int, centre: float):
        x = rng.normal(centre, 1.0, rows)
        c = rng.choice(["calm", "noisy"], rows)
        y = x + rng.normal(size=rows) * (0.5 + np.abs(x)) * np.where(c == "calm", 1.0, 2.0)
        return pd.DataFrame({"x": x, "c": c.astype(object)}), y

    held_features, held_truth = table(2_000, 0.0)
    outputs = ModelOutputs(held_features["x"].to_numpy(), None, [])
    fitted = fit_estimator(config, outputs, pd.Series(held_truth), held_features, {"mae": 1.0})
    fitted.save(tmp_path)
    estimator = PerformanceEstimator.load(tmp_path)

    naive = np.mean(np.abs(held_features["x"].to_numpy() - held_truth))
    errors, naive_errors, held = [], [], []
    for _ in range(10):
        features, truth = table(500, 1.0)
        batch = ModelOutputs(features["x"].to_numpy(), None, [])
        entry = estimator.estimate(batch, features, metric="mae")["mae"]
        realised = np.mean(np.abs(features["x"].to_numpy() - truth))
        errors.append(abs(entry["value"] - realised) / realised)
        naive_errors.append(abs(naive - realised) / realised)
        held.append(entry["lower"] <= realised <= entry["upper"])
    # The batch is harder than the held-out rows: the held-out MAE misses by ~15-20%; DLE's
    # loss model follows most of it (trees do not extrapolate past the held-out range).
    assert np.mean(naive_errors) > 0.12
    assert np.mean(errors) < 0.6 * np.mean(naive_errors)
    assert np.mean(held) >= 0.5


def test_dle_takes_dates_flags_and_nullable_text_among_the_features():
    """``prepare_features`` hands dates as Timestamps and text as pandas strings with NA:
    the loss model gets numbers (days since the epoch, 0/1) and plain text instead."""
    rng = np.random.default_rng(8)
    rows = 300
    features = pd.DataFrame(
        {
            "x": rng.normal(size=rows),
            "listed_on": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 700, rows), "D"),
            "flag": rng.random(rows) < 0.5,
            "c": pd.Series(rng.choice(["a", "b", None], rows), dtype="string"),
        }
    )
    features.loc[::17, "listed_on"] = pd.NaT
    truth = features["x"] + rng.normal(size=rows)
    outputs = ModelOutputs(features["x"].to_numpy(), None, [])

    fitted = fit_estimator(_config("regression"), outputs, truth, features, {})
    entry = fitted.estimate(outputs, features, metric="mae")["mae"]

    assert 0.5 < entry["value"] < 1.2  # the realised MAE of N(0, 1) noise is ~0.8


def test_estimated_verdict_degrades_only_when_the_confident_bound_is_past_max_drop():
    def verdict(value: float, bound: float) -> dict:
        estimates = {"roc_auc": {"value": value, "lower": None, "upper": None, "bound": bound}}
        return estimated_verdict(
            estimates,
            {"roc_auc": 0.85},
            metric="roc_auc",
            max_drop=0.05,
            method="cbpe",
            rows=500,
            min_rows=50,
        )

    assert verdict(0.70, 0.75)["degraded"] is True
    assert verdict(0.78, 0.82)["degraded"] is False  # the drop may be noise
    assert verdict(0.78, 0.82)["drop"] == pytest.approx(0.07)


def test_estimate_store_pairs_estimates_with_realised_values(tmp_path):
    store = EstimateStore(tmp_path, "p")
    verdict = {
        "metric": "roc_auc",
        "method": "cbpe",
        "estimates": {"roc_auc": {"value": 0.8, "lower": 0.75, "upper": 0.85}},
    }
    store.add(estimate_record("b1", "3", verdict, "t0"))
    store.add(estimate_record("b2", "3", verdict, "t0"))
    store.add(realised_record("b1", {"roc_auc": 0.77}, 400, "t1"))
    store.path.write_text(store.path.read_text() + '{"kind": "real')  # a torn last line

    pairs = {pair["batch_id"]: pair for pair in store.pairs()}

    assert pairs["b1"]["realised"] == 0.77 and pairs["b1"]["within_interval"] is True
    assert pairs["b2"].get("realised") is None and pairs["b2"]["within_interval"] is None


def test_a_version_registered_without_an_estimator_has_none(tmp_path):
    from types import SimpleNamespace

    old_version = SimpleNamespace(tags={"loopml.family": "logistic"}, run_id="r1")

    assert load_version_estimator(None, old_version, tmp_path) is None


def test_intervals_of_a_nearly_perfect_model_stay_on_the_metrics_scale():
    """Estimates near 1 with a spread around them: no bound may promise more than 1 (before,
    an accuracy of 1.02 on 40 rows) or less than 0."""
    rng = np.random.default_rng(5)
    classes = np.array(["a", "b", "c"])
    config = _config("classification", classes=list(classes))

    def confident(rows: int) -> np.ndarray:
        probabilities = np.full((rows, 3), 0.005)
        probabilities[np.arange(rows), rng.integers(0, 3, rows)] = 0.99
        return probabilities

    reference = confident(3_000)
    predicted = reference.argmax(axis=1)
    truth = np.where(rng.random(3_000) < 0.99, predicted, (predicted + 1) % 3)
    outputs = ModelOutputs(classes[predicted], reference, list(classes))
    estimator = fit_estimator(config, outputs, pd.Series(classes[truth]), pd.DataFrame(), {})
    batch = confident(40)
    estimates = estimator.estimate(
        ModelOutputs(classes[batch.argmax(axis=1)], batch, list(classes)), metric="f1_macro"
    )

    assert estimates["accuracy"]["value"] > 0.98
    for name, entry in estimates.items():
        for key in ("lower", "upper", "bound"):
            if entry.get(key) is not None:
                assert 0.0 <= entry[key] <= 1.0, (name, key, entry)
