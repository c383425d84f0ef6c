"""Every metric loopml accepts: its direction, its scale, and one way to compute it.

Training evaluation, cross-validation, the promotion gate, monitoring's performance verdict and
its bootstrap noise all compute a metric here, from one canonical form of the outcomes
(:class:`Outcomes`), so a metric the config accepts means the same number everywhere.

Scores (``roc_auc``, ``f1``, ``r2`` ...) are maximised, errors (``rmse``, ``log_loss`` ...)
minimised. A *bounded* metric lives on a fixed scale (ROC-AUC, accuracy, Brier, R² up to 1), so
a margin on it is absolute; an unbounded one (RMSE, MAE, log-loss) is in the target's or the
loss's own units, so margins are fractions of the champion's value (see :mod:`loopml.gate`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from loopml.label_rule import is_label, label_keys


class _ScikitLearnMetrics:
    """``sklearn.metrics``, imported on first use: the config imports this module for the
    metric names, and a ``loopml status`` must not pay scikit-learn's import for them."""

    def __getattr__(self, name: str) -> Any:
        from sklearn import metrics

        return getattr(metrics, name)


skmetrics = _ScikitLearnMetrics()


def _undefined_metric_warning() -> type[Warning]:
    from sklearn.exceptions import UndefinedMetricWarning

    return UndefinedMetricWarning


Direction = Literal["maximize", "minimize"]
TaskKind = Literal["binary", "multiclass", "regression"]
# Per-class probabilities exist at training time only: the prediction log keeps one score a row.
Needs = Literal["labels", "scores", "class_probabilities"]


@dataclass(frozen=True)
class Outcomes:
    """Truth and predictions of one task kind, in the form every metric reads.

    Attributes:
        kind: ``"binary"``, ``"multiclass"`` or ``"regression"``.
        truth: binary: whether each row is positive; multiclass: label keys
            (:func:`loopml.label_rule.label_key`); regression: floats.
        predicted: the predicted labels (or values), in the same form as ``truth``.
        scores: binary: the positive-class probability; multiclass: the class-probability matrix
            (columns follow ``class_keys``); ``None`` when unknown.
        class_keys: the label key of each column of a multiclass ``scores`` matrix.
    """

    kind: TaskKind
    truth: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray | None = None
    class_keys: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.truth)

    def take(self, rows: np.ndarray) -> Outcomes:
        """The outcomes of the rows at ``rows`` (a bootstrap resample, say)."""
        return replace(
            self,
            truth=self.truth[rows],
            predicted=self.predicted[rows],
            scores=None if self.scores is None else self.scores[rows],
        )


def binary_outcomes(y_true: Any, y_pred: Any, positive_label: Any, scores: Any = None) -> Outcomes:
    """Binary outcomes: labels compared with ``positive_label`` by the one label rule."""
    truth, predicted = _checked_pair(y_true, y_pred)
    return Outcomes(
        "binary",
        is_label(truth, positive_label),
        is_label(predicted, positive_label),
        None if scores is None else np.asarray(scores, dtype=np.float64),
    )


def multiclass_outcomes(
    y_true: Any,
    y_pred: Any,
    probabilities: Any = None,
    classes: Sequence[Any] | None = None,
) -> Outcomes:
    """Multiclass outcomes; ``probabilities`` columns follow ``classes`` (a model's ``classes_``).

    Labels unseen by the model get a zero-probability column, so losses stay defined.
    """
    truth, predicted = _checked_pair(y_true, y_pred)
    truth_keys, predicted_keys = label_keys(truth), label_keys(predicted)
    matrix, class_keys = None, None
    if probabilities is not None and classes is not None:
        class_keys = tuple(label_keys(list(classes)))
        unseen = tuple(dict.fromkeys(k for k in truth_keys if k not in class_keys))
        matrix = np.asarray(probabilities, dtype=np.float64)
        if unseen:
            matrix = np.hstack([matrix, np.zeros((len(truth), len(unseen)))])
            class_keys = (*class_keys, *unseen)
    return Outcomes("multiclass", truth_keys, predicted_keys, matrix, class_keys)


def regression_outcomes(y_true: Any, y_pred: Any) -> Outcomes:
    truth, predicted = _checked_pair(y_true, y_pred)
    return Outcomes("regression", truth.astype(np.float64), predicted.astype(np.float64))


def _checked_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape[0] != predicted.shape[0]:
        raise ValueError(f"y_true has {truth.shape[0]} rows but y_pred has {predicted.shape[0]}")
    return truth, predicted


# --------------------------------------------------------------------------- the metrics


@dataclass(frozen=True)
class Metric:
    """One metric: how it is read and how it is computed.

    Attributes:
        name: the name configs and tags use.
        direction: ``"maximize"`` for scores, ``"minimize"`` for errors.
        bounded: on a fixed scale (margins absolute) rather than in the target's units.
        needs: ``"labels"`` (it reads the truth and the predicted labels), ``"scores"`` (the
            truth and the positive-class probability) or ``"class_probabilities"`` (the truth
            and the multiclass matrix). A metric of scores reads no predicted label: a search
            rescoring one fold swaps the scores alone.
        compute: the value on some outcomes; NaN where undefined (one class present).
    """

    name: str
    direction: Direction
    bounded: bool
    needs: Needs
    compute: Callable[[Outcomes], float]


def _both_classes(outcomes: Outcomes) -> bool:
    positives = int(outcomes.truth.sum())
    return 0 < positives < len(outcomes)


def _with_scores(function: Callable[[Outcomes], float], both_classes: bool = False):
    def compute(outcomes: Outcomes) -> float:
        if outcomes.scores is None or len(outcomes) == 0:
            return math.nan
        if both_classes and not _both_classes(outcomes):
            return math.nan
        return float(function(outcomes))

    return compute


def _labels(function: Callable[[Outcomes], float]):
    def compute(outcomes: Outcomes) -> float:
        return math.nan if len(outcomes) == 0 else float(function(outcomes))

    return compute


def _present(outcomes: Outcomes) -> list[str]:
    """Multiclass labels present on either side (absent classes do not drag a macro mean)."""
    return sorted({*outcomes.truth, *outcomes.predicted} - {None})


def _multiclass_log_loss(outcomes: Outcomes) -> float:
    # By hand: sklearn's log_loss wants columns in sorted label order; ours follow class_keys.
    clipped = np.clip(outcomes.scores, 1e-15, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    column_of = {key: index for index, key in enumerate(outcomes.class_keys)}
    columns = np.fromiter((column_of[key] for key in outcomes.truth), np.intp, len(outcomes))
    return float(-np.mean(np.log(clipped[np.arange(len(outcomes)), columns])))


def _roc_auc_ovr(outcomes: Outcomes) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present in the truth (both sides needed)."""
    aucs = []
    for index, key in enumerate(outcomes.class_keys):
        actual = outcomes.truth == key
        if 0 < actual.sum() < len(actual):
            aucs.append(skmetrics.roc_auc_score(actual, outcomes.scores[:, index]))
    return float(np.mean(aucs)) if aucs else math.nan


def _text(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=str)


def _counts(outcomes: Outcomes) -> tuple[int, int, int, int]:
    """True positives, false positives, false negatives, true negatives."""
    truth, predicted = outcomes.truth, outcomes.predicted
    tp = int(np.count_nonzero(truth & predicted))
    fp = int(np.count_nonzero(~truth & predicted))
    fn = int(np.count_nonzero(truth & ~predicted))
    return tp, fp, fn, len(truth) - tp - fp - fn


def _ratio(numerator: float, denominator: float) -> float:
    """scikit-learn's ``zero_division=0``: an empty denominator scores 0."""
    return numerator / denominator if denominator else 0.0


def _balanced_accuracy(outcomes: Outcomes) -> float:
    tp, fp, fn, tn = _counts(outcomes)
    recalls = [tp / (tp + fn) if tp + fn else None, tn / (tn + fp) if tn + fp else None]
    present = [recall for recall in recalls if recall is not None]
    return float(np.mean(present))


def _f1_macro(outcomes: Outcomes) -> float:
    tp, fp, fn, tn = _counts(outcomes)
    return (_ratio(2 * tp, 2 * tp + fp + fn) + _ratio(2 * tn, 2 * tn + fn + fp)) / 2


def _roc_auc(outcomes: Outcomes) -> float:
    """The Mann-Whitney statistic (what ``roc_auc_score`` computes), ties counted half.

    The positives' rank sum from one sort: each run of equal scores shares its mean rank. No
    per-row ranks (``scipy.stats.rankdata`` costs three times as much, and a search and the
    bootstrap compute thousands of these); NaN when a score is.
    """
    scores, truth = outcomes.scores, outcomes.truth
    if np.isnan(scores).any():
        return math.nan
    order = np.argsort(scores)
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    mean_ranks = (starts + ends + 1) / 2  # 1-based ranks starts+1 .. ends
    positives_per_run = np.add.reduceat(truth[order].astype(np.int64), starts)
    positives = int(positives_per_run.sum())
    negatives = len(truth) - positives
    rank_sum = float(positives_per_run @ mean_ranks)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _binary_log_loss(outcomes: Outcomes) -> float:
    # scikit-learn clips at the float's machine epsilon; so does this.
    epsilon = np.finfo(np.float64).eps
    scores = np.clip(outcomes.scores, epsilon, 1 - epsilon)
    return float(-np.mean(np.where(outcomes.truth, np.log(scores), np.log1p(-scores))))


# Binary metrics are NumPy on the confusion counts and ranks (tests hold them equal to
# scikit-learn's): the bootstrap calls them hundreds of times per verdict, and scikit-learn's
# input checks cost milliseconds a call.
def _binary_metrics() -> list[Metric]:
    return [
        Metric("roc_auc", "maximize", True, "scores", _with_scores(_roc_auc, both_classes=True)),
        Metric(
            "pr_auc",  # average precision, scikit-learn's summary of the PR curve
            "maximize",
            True,
            "scores",
            _with_scores(
                lambda o: skmetrics.average_precision_score(o.truth, o.scores), both_classes=True
            ),
        ),
        Metric(
            "accuracy",
            "maximize",
            True,
            "labels",
            _labels(lambda o: float(np.mean(o.truth == o.predicted))),
        ),
        Metric("balanced_accuracy", "maximize", True, "labels", _labels(_balanced_accuracy)),
        Metric(
            "precision",
            "maximize",
            True,
            "labels",
            _labels(lambda o: _ratio(_counts(o)[0], _counts(o)[0] + _counts(o)[1])),
        ),
        Metric(
            "recall",
            "maximize",
            True,
            "labels",
            _labels(lambda o: _ratio(_counts(o)[0], _counts(o)[0] + _counts(o)[2])),
        ),
        Metric(
            "f1",
            "maximize",
            True,
            "labels",
            _labels(lambda o: _ratio(2 * _counts(o)[0], 2 * _counts(o)[0] + sum(_counts(o)[1:3]))),
        ),
        Metric("f1_macro", "maximize", True, "labels", _labels(_f1_macro)),
        Metric("log_loss", "minimize", False, "scores", _with_scores(_binary_log_loss)),
        Metric(
            "brier",
            "minimize",
            True,
            "scores",
            _with_scores(lambda o: float(np.mean((o.scores - o.truth) ** 2))),
        ),
    ]


def _multiclass_metrics() -> list[Metric]:
    def macro(function: str) -> Callable[[Outcomes], float]:
        return _labels(
            lambda o: getattr(skmetrics, function)(
                _text(o.truth),
                _text(o.predicted),
                average="macro",
                labels=_present(o),
                zero_division=0,
            )
        )

    def class_probabilities(function: Callable[[Outcomes], float]):
        def compute(outcomes: Outcomes) -> float:
            if outcomes.scores is None or outcomes.scores.ndim != 2 or len(outcomes) == 0:
                return math.nan
            return function(outcomes)

        return compute

    return [
        Metric(
            "accuracy",
            "maximize",
            True,
            "labels",
            _labels(lambda o: skmetrics.accuracy_score(_text(o.truth), _text(o.predicted))),
        ),
        Metric(
            "balanced_accuracy",
            "maximize",
            True,
            "labels",
            _labels(
                lambda o: skmetrics.balanced_accuracy_score(_text(o.truth), _text(o.predicted))
            ),
        ),
        Metric("f1_macro", "maximize", True, "labels", macro("f1_score")),
        Metric("precision_macro", "maximize", True, "labels", macro("precision_score")),
        Metric("recall_macro", "maximize", True, "labels", macro("recall_score")),
        Metric(
            "log_loss",
            "minimize",
            False,
            "class_probabilities",
            class_probabilities(_multiclass_log_loss),
        ),
        Metric(
            "roc_auc_ovr",
            "maximize",
            True,
            "class_probabilities",
            class_probabilities(_roc_auc_ovr),
        ),
        Metric(
            "roc_auc", "maximize", True, "class_probabilities", class_probabilities(_roc_auc_ovr)
        ),
    ]


def _r2(outcomes: Outcomes) -> float:
    truth = outcomes.truth
    if len(truth) < 2 or np.ptp(truth) == 0:
        return math.nan  # undefined on fewer than two distinct values
    residual = np.sum((truth - outcomes.predicted) ** 2)
    return float(1 - residual / np.sum((truth - truth.mean()) ** 2))


def _regression_metrics() -> list[Metric]:
    def error(o: Outcomes) -> np.ndarray:
        return o.predicted - o.truth

    epsilon = np.finfo(np.float64).eps
    return [
        Metric(
            "rmse", "minimize", False, "labels", _labels(lambda o: np.sqrt(np.mean(error(o) ** 2)))
        ),
        Metric("mae", "minimize", False, "labels", _labels(lambda o: np.mean(np.abs(error(o))))),
        Metric("mse", "minimize", False, "labels", _labels(lambda o: np.mean(error(o) ** 2))),
        Metric(
            "mape",
            "minimize",
            False,
            "labels",
            _labels(lambda o: np.mean(np.abs(error(o)) / np.maximum(np.abs(o.truth), epsilon))),
        ),
        Metric("r2", "maximize", True, "labels", _r2),
    ]


METRICS: dict[TaskKind, dict[str, Metric]] = {
    "binary": {metric.name: metric for metric in _binary_metrics()},
    "multiclass": {metric.name: metric for metric in _multiclass_metrics()},
    "regression": {metric.name: metric for metric in _regression_metrics()},
}
# The metric a project is searched, gated and monitored on when its config names none.
DEFAULT_METRICS: dict[TaskKind, str] = {
    "binary": "roc_auc",
    "multiclass": "f1_macro",
    "regression": "rmse",
}
# What a held-out evaluation always reports; the config's metrics are added to these.
REPORTED_METRICS: dict[TaskKind, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss"),
    "multiclass": ("accuracy", "f1_macro", "log_loss", "roc_auc_ovr"),
    "regression": ("rmse", "mae", "r2"),
}


def default_metric(kind: TaskKind) -> str:
    """The metric used when the config names none (the one default rule)."""
    return DEFAULT_METRICS[kind]


def supported_metrics(kind: TaskKind) -> tuple[str, ...]:
    """Every metric name accepted for a task kind."""
    return tuple(METRICS[kind])


def monitorable_metrics(kind: TaskKind) -> tuple[str, ...]:
    """Metrics computable from the prediction log (labels and one score a row)."""
    return tuple(
        name for name, metric in METRICS[kind].items() if metric.needs != "class_probabilities"
    )


def unknown_metric_message(metric: str, kind: TaskKind, *, monitoring: bool = False) -> str | None:
    """Why ``metric`` cannot be used for ``kind`` (``None`` when it can)."""
    known = monitorable_metrics(kind) if monitoring else supported_metrics(kind)
    if metric in known:
        return None
    where = "monitored from the prediction log" if metric in METRICS[kind] else "computed"
    return f"metric {metric!r} cannot be {where} for {kind} tasks; use one of: {', '.join(known)}"


def _any_metric(metric: str) -> Metric:
    for metrics in METRICS.values():
        if metric in metrics:
            return metrics[metric]
    raise KeyError(f"unknown metric {metric!r}")


def metric_needs(metric: str, kind: TaskKind) -> Needs:
    """What ``metric`` reads of a ``kind`` task's outcomes besides the truth (see Metric)."""
    return METRICS[kind][metric].needs


def metric_direction(metric: str) -> Direction:
    """``"minimize"`` for error metrics (rmse, mae, log_loss ...), ``"maximize"`` otherwise."""
    return _any_metric(metric).direction


def is_bounded(metric: str) -> bool:
    """Whether ``metric`` lives on a fixed scale (margins on it are absolute)."""
    return _any_metric(metric).bounded


def compute(metrics: Sequence[str], outcomes: Outcomes) -> dict[str, float]:
    """The named metrics of ``outcomes``; NaN where one is undefined on these rows.

    Raises:
        KeyError: a name is not a metric of the outcomes' task kind.
    """
    known = METRICS[outcomes.kind]
    with warnings.catch_warnings():
        # A single-class batch makes some metrics undefined: they come back NaN instead.
        warnings.simplefilter("ignore", _undefined_metric_warning())
        warnings.simplefilter("ignore", UserWarning)
        return {name: float(known[name].compute(outcomes)) for name in metrics}


def defined(outcomes: Outcomes, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics (default: every one of the task) that are defined on ``outcomes``."""
    names = supported_metrics(outcomes.kind) if metrics is None else metrics
    return {name: value for name, value in compute(names, outcomes).items() if math.isfinite(value)}


def standard_error(
    metric: str,
    outcomes: Outcomes,
    *,
    resamples: int = 200,
    max_rows: int = 20_000,
    random_state: int = 0,
) -> float | None:
    """Sampling noise of ``metric`` on these rows: its bootstrap standard error.

    Each resample is measured by the metric's own :func:`compute`. Above ``max_rows`` rows the
    resamples hold ``max_rows`` rows and the error is scaled by sqrt(max_rows / rows) (the
    1/sqrt(n) law), so a 1M-row batch costs what a 20k-row one does. ``None`` when the metric is
    undefined on most resamples (a single class, say).
    """
    rows = len(outcomes)
    if rows < 2:
        return None
    function = METRICS[outcomes.kind][metric].compute
    draw = min(rows, max_rows)
    generator = np.random.default_rng(random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _undefined_metric_warning())
        warnings.simplefilter("ignore", UserWarning)
        values = np.array(
            [function(outcomes.take(generator.integers(0, rows, draw))) for _ in range(resamples)]
        )
    values = values[np.isfinite(values)]
    if values.size < max(resamples // 2, 2):
        return None
    return float(np.std(values, ddof=1) * np.sqrt(draw / rows))
