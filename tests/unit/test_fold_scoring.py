"""A search scores each fold hundreds of times; the reused truth must not change a score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml import metrics
from loopml.config import ProjectConfig
from loopml.evaluation import compute_metrics
from loopml.search.cross_validation import CrossValidation, _StoredPredictions, cv_splitter


def _config(task: str, metric: str, **labels) -> ProjectConfig:
    return ProjectConfig(
        name="folds",
        data="memory",
        target="y",
        task=task,
        columns={"numeric": ["x"], "categorical": []},
        split={"cv_folds": 3, "random_state": 0},
        search={"metric": metric},
        **labels,
    )


def _predictions(target: pd.Series, classes: np.ndarray | None, seed: int) -> np.ndarray:
    """Noisy predictions of ``target``: probability rows per class, or values."""
    generator = np.random.default_rng(seed)
    if classes is None:
        return target.to_numpy() + generator.normal(0, 1, len(target))
    hits = (target.to_numpy()[:, None] == classes[None, :]).astype(float)
    raw = hits + generator.random((len(target), len(classes))) * 1.5
    return raw / raw.sum(axis=1, keepdims=True)


CASES = [
    ("classification", "roc_auc", {"positive_label": "yes"}, ["no", "yes"]),
    ("classification", "log_loss", {"positive_label": "yes"}, ["no", "yes"]),
    ("classification", "f1", {"positive_label": "yes"}, ["no", "yes"]),
    ("classification", "roc_auc", {"classes": ["a", "b", "c"]}, ["a", "b", "c"]),
    ("classification", "accuracy", {"classes": ["a", "b", "c"]}, ["a", "b", "c"]),
    ("regression", "rmse", {}, None),
]


@pytest.mark.parametrize(("task", "metric", "labels", "values"), CASES)
def test_rescoring_a_fold_gives_what_scoring_it_afresh_gives(task, metric, labels, values):
    config = _config(task, metric, **labels)
    generator = np.random.default_rng(1)
    rows = 300
    features = pd.DataFrame({"x": generator.normal(size=rows)})
    if values is None:
        target = pd.Series(generator.normal(10, 3, rows), name="y")
    else:
        target = pd.Series(generator.choice(values, rows), name="y")
    classes = None if values is None else np.unique(target)
    folds = list(cv_splitter(config).split(features, target))
    cv = CrossValidation(features, target, folds, config, metric, classes)

    for seed in range(4):  # the first pass keys each fold's truth; later ones reuse it
        predictions = _predictions(target, classes, seed)
        for _, rows_of_fold in folds:
            fresh = compute_metrics(
                _StoredPredictions(predictions[rows_of_fold], classes),
                features.iloc[rows_of_fold],
                target.iloc[rows_of_fold],
                config,
                [metric],
            )[metric]
            assert cv.score(predictions[rows_of_fold], rows_of_fold) == pytest.approx(fresh)


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_metrics_of_scores_read_no_predicted_label(kind):
    """The promise fold rescoring relies on (Metric.needs): swap the predicted labels and a
    metric of scores does not move."""
    generator = np.random.default_rng(2)
    rows = 200
    if kind == "binary":
        truth = generator.random(rows) < 0.4
        scores = np.clip(truth * 0.3 + generator.random(rows) * 0.7, 0, 1)
        outcomes = metrics.binary_outcomes(truth, scores >= 0.5, True, scores)
        swapped = metrics.binary_outcomes(truth, scores < 0.5, True, scores)
    else:
        classes = ["a", "b", "c"]
        truth = generator.choice(classes, rows)
        matrix = generator.dirichlet(np.ones(3), rows)
        predicted = np.asarray(classes)[matrix.argmax(axis=1)]
        outcomes = metrics.multiclass_outcomes(truth, predicted, matrix, classes)
        swapped = metrics.multiclass_outcomes(truth, np.roll(predicted, 1), matrix, classes)
    of_scores = [
        name
        for name in metrics.supported_metrics(kind)
        if metrics.metric_needs(name, kind) != "labels"
    ]

    assert of_scores
    assert metrics.compute(of_scores, outcomes) == metrics.compute(of_scores, swapped)
