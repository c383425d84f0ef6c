"""Performance without labels: CBPE for classification, DLE for regression.

Labels arrive late (days for churn, months for credit default); until then a batch's performance
can only be *estimated* from what the model outputs and what it learned about its own errors on
held-out rows. Two published methods (NannyML's definitions, written here from them):

- **CBPE** (confidence-based performance estimation, classification). A calibration map fitted on
  the held-out rows turns the model's probabilities into calibrated ones; on a calibrated model a
  row with probability p is positive with probability p, so the *expected* confusion matrix of a
  batch is a sum of probabilities (TP = sum of p over rows predicted positive, FP = sum of 1 - p,
  ...) and the expected ROC curve is the cumulative sums of p and 1 - p in score order.
  Multiclass: one-vs-rest calibration per class, rows renormalised.
- **DLE** (direct loss estimation, regression). A model fitted on the held-out rows' features and
  predictions predicts each row's absolute (and squared) error; their batch means estimate MAE
  (and MSE, so RMSE).

Both hold under covariate shift (the inputs move, P(target | inputs) does not) and cannot see
concept drift: when the relation itself changes, the model's own confidence is wrong and so is
the estimate. The estimator is fitted at registration time and stored with the model version as
JSON (the calibration map, the reference figures) plus skops files for DLE's loss models.

Intervals: the *realised* metric of a batch varies around the expected one because its labels
are random even when the probabilities are right. For CBPE the interval is the spread of the
metric over label sets drawn from the calibrated probabilities (a parametric bootstrap); for DLE
it is the normal interval from the loss model's out-of-fold residual spread over ``sqrt(rows)``.
Neither includes the calibration map's own error (small next to it from ~1,000 held-out rows).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.errors import LoopmlError
from loopml.gate import relative_bounds, scaled_improvement
from loopml.label_rule import is_label

CALIBRATION_FILE = "estimator.json"
LOSS_MODEL_FILES = {"mae": "loss_absolute.skops", "rmse": "loss_squared.skops"}
PREDICTION_COLUMN = "__prediction__"
LEVEL = 0.95
DRAWS = 300
CALIBRATION_RESAMPLES = 20
MAX_DRAW_ROWS = 5_000
# skops refuses types it was not told to trust; these are what a HistGradientBoosting loss model
# behind an OrdinalEncoder needs (checked at load, never "trust whatever the file holds").
LOSS_MODEL_TYPES = {
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
}

BINARY_METRICS = ("roc_auc", "accuracy", "precision", "recall", "f1")
MULTICLASS_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
REGRESSION_METRICS = ("mae", "rmse")


class EstimationError(LoopmlError):
    """The estimator cannot be fitted or applied (e.g. a single class in the held-out rows)."""


@dataclass
class ModelOutputs:
    """What the model says about a batch: labels and, for classifiers, class probabilities.

    ``probabilities`` columns follow ``classes`` (the model's ``classes_``).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    classes: list[Any]


def model_outputs(model: Any, features: pd.DataFrame, config: ProjectConfig) -> ModelOutputs:
    """The one place the estimator asks a model for its outputs: one ``predict_proba`` pass,
    labels read off it by loopml's scoring rule (the threshold inside the model applies)."""
    from loopml.scoring import labels_from_probabilities

    if config.task == "regression":
        return ModelOutputs(np.asarray(model.predict(features), dtype=float), None, [])
    probabilities = np.asarray(model.predict_proba(features), dtype=float)
    labels = labels_from_probabilities(model, probabilities)
    return ModelOutputs(np.asarray(labels), probabilities, list(model.classes_))


# --------------------------------------------------------------------------- calibration


CALIBRATION_METHODS = ("identity", "sigmoid", "isotonic")
CALIBRATION_FOLDS = 5
# Scores are clipped this far from 0 and 1 before the logit (a tree can output exactly 0 or 1).
LOGIT_EPSILON = 1e-6


def fit_calibration(
    scores: np.ndarray, outcomes: np.ndarray, method: str | None = None
) -> dict[str, Any]:
    """A map from a class's scores to calibrated probabilities, as JSON.

    Three candidates, each a monotone map (so the rows' order, and the realised ROC-AUC, is
    the model's own): ``identity`` (the scores are already calibrated), ``sigmoid`` (Platt's
    logistic regression on the score's logit: two parameters, smooth) and ``isotonic`` (any
    monotone shape, as a step function whose steps are coarse where positives are few). With
    ``method`` None the one with the lowest cross-validated log loss on these rows is kept — a
    proper scoring rule judges calibration, and held-out folds keep the flexible isotonic map
    from winning by fitting noise. NannyML always fits isotonic; on a few hundred or thousand
    held-out rows its steps cost accuracy where the sigmoid holds (docs/monitoring.md).

    Args:
        scores: the model's scores for the class.
        outcomes: 1 where the row is of the class, else 0.
        method: one of :data:`CALIBRATION_METHODS`, or None to choose by cross-validation.
    """
    scores, outcomes = np.asarray(scores, dtype=float), np.asarray(outcomes, dtype=float)
    if method is None:
        method = select_calibration(scores, outcomes)
    if method == "identity":
        return {"method": "identity"}
    if method == "sigmoid":
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(outcomes)) < 2:  # one class only: the map is that constant
            return _isotonic_map(scores, outcomes)
        logistic = LogisticRegression(C=1e6, max_iter=1_000)  # no shrinkage: 2 parameters
        logistic.fit(_logit(scores)[:, None], outcomes)
        return {
            "method": "sigmoid",
            "slope": float(logistic.coef_[0, 0]),
            "intercept": float(logistic.intercept_[0]),
        }
    return _isotonic_map(scores, outcomes)


def select_calibration(scores: np.ndarray, outcomes: np.ndarray) -> str:
    """The calibration method with the lowest out-of-fold log loss (ties: the simpler one).

    Fewer than two rows of either outcome leave nothing to cross-validate: isotonic, as before.
    """
    from sklearn.model_selection import StratifiedKFold

    outcomes = np.asarray(outcomes, dtype=int)
    folds = min(CALIBRATION_FOLDS, int(np.bincount(outcomes, minlength=2).min()))
    if folds < 2:
        return "isotonic"
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    losses = {}
    for method in CALIBRATION_METHODS:
        total = 0.0
        for fitted, judged in splitter.split(scores[:, None], outcomes):
            knots = fit_calibration(scores[fitted], outcomes[fitted], method)
            probabilities = np.clip(apply_calibration(scores[judged], knots), 1e-6, 1 - 1e-6)
            truth = outcomes[judged]
            total -= float(
                np.sum(truth * np.log(probabilities) + (1 - truth) * np.log(1 - probabilities))
            )
        losses[method] = total
    return min(CALIBRATION_METHODS, key=losses.__getitem__)  # a tie keeps the simpler one


def _isotonic_map(scores: np.ndarray, outcomes: np.ndarray) -> dict[str, Any]:
    """Isotonic regression's knots; applying them is a linear interpolation between the knots,
    exactly what scikit-learn's ``IsotonicRegression.predict`` does."""
    from sklearn.isotonic import IsotonicRegression

    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    isotonic.fit(scores, outcomes)
    return {
        "method": "isotonic",
        "x": [float(v) for v in isotonic.X_thresholds_],
        "y": [float(v) for v in isotonic.y_thresholds_],
    }


def apply_calibration(scores: np.ndarray, knots: dict[str, Any]) -> np.ndarray:
    """Calibrated probabilities; a map without ``method`` is isotonic knots (the stored format
    before the method was chosen)."""
    scores = np.asarray(scores, dtype=float)
    method = knots.get("method", "isotonic")
    if method == "identity":
        return np.clip(scores, 0.0, 1.0)
    if method == "sigmoid":
        from scipy.special import expit  # the logistic function, without exp's overflow

        return expit(knots["slope"] * _logit(scores) + knots["intercept"])
    return np.interp(scores, knots["x"], knots["y"])


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=float), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(clipped / (1 - clipped))


def calibrated_probabilities(probabilities: np.ndarray, maps: list[dict[str, Any]]) -> np.ndarray:
    """Per-class calibrated probabilities; several classes are renormalised to sum to one."""
    if len(maps) == 1:  # binary: the positive class's map
        return apply_calibration(probabilities, maps[0])
    calibrated = np.column_stack(
        [apply_calibration(probabilities[:, i], knots) for i, knots in enumerate(maps)]
    )
    totals = calibrated.sum(axis=1, keepdims=True)
    uniform = np.full_like(calibrated, 1.0 / calibrated.shape[1])
    return np.where(totals > 0, calibrated / np.where(totals > 0, totals, 1.0), uniform)


# --------------------------------------------------------------------------- expected metrics


def expected_binary_metrics(
    scores: np.ndarray, calibrated: np.ndarray, flagged: np.ndarray
) -> dict[str, float]:
    """CBPE's expected metrics of a binary classifier.

    Args:
        scores: the model's positive-class scores (they order the rows, as for a real ROC curve).
        calibrated: calibrated probabilities that each row is positive.
        flagged: whether each row is predicted positive.
    """
    p, flagged = np.asarray(calibrated, dtype=float), np.asarray(flagged, dtype=bool)
    tp, fp = float(p[flagged].sum()), float((1 - p[flagged]).sum())
    fn, tn = float(p[~flagged].sum()), float((1 - p[~flagged]).sum())
    result = {
        "accuracy": (tp + tn) / max(len(p), 1),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    auc = expected_roc_auc(scores, p)
    if auc is not None:
        result["roc_auc"] = auc
    return result


def expected_roc_auc(scores: np.ndarray, calibrated: np.ndarray) -> float | None:
    """Expected concordant (positive, negative) pairs over expected pairs, in score order.

    This is the area under the expected ROC curve (expected TPR and FPR at every score cut, as
    NannyML computes it) less one term: that area pairs each row with itself (p x (1 - p)),
    a pair no label set has — a row is positive or negative, never both. Left in, it pulls the
    estimate towards 0.5 by about (AUC - 0.5) x sum p(1 - p) / (sum p x sum (1 - p)), which
    grows as batches shrink. Tied scores form one step (half their pairs count, as in the
    realised AUC).
    """
    p = np.asarray(calibrated, dtype=float)
    frame = pd.DataFrame({"score": np.asarray(scores, dtype=float), "p": p})
    grouped = frame.groupby("score", sort=True)["p"].agg(["sum", "count"])[::-1]
    positives = grouped["sum"].to_numpy()
    negatives = grouped["count"].to_numpy() - positives
    self_pairs = float(np.sum(p * (1 - p)))
    pairs = positives.sum() * negatives.sum() - self_pairs
    if pairs <= 1e-12:
        return None
    positives_above = np.cumsum(positives) - positives
    concordant = np.sum(negatives * (positives_above + positives / 2)) - self_pairs / 2
    return float(concordant / pairs)


def expected_multiclass_metrics(calibrated: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """CBPE's expected macro metrics: one expected confusion matrix per class (one-vs-rest)."""
    rows, n_classes = calibrated.shape
    precision, recall, f1 = [], [], []
    for code in range(n_classes):
        picked = predicted == code
        tp = float(calibrated[picked, code].sum())
        fp = float(picked.sum()) - tp
        fn = float(calibrated[~picked, code].sum())
        if tp + fp + fn <= 1e-12:
            continue
        precision.append(_ratio(tp, tp + fp))
        recall.append(_ratio(tp, tp + fn))
        f1.append(_ratio(2 * tp, 2 * tp + fp + fn))
    return {
        "accuracy": float(calibrated[np.arange(rows), predicted].sum() / max(rows, 1)),
        "precision_macro": float(np.mean(precision)) if precision else 0.0,
        "recall_macro": float(np.mean(recall)) if recall else 0.0,
        "f1_macro": float(np.mean(f1)) if f1 else 0.0,
    }


def simulated_metric_draws(
    calibrated: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray | None,
    *,
    draws: int = DRAWS,
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Each metric on ``draws`` label sets drawn from the calibrated probabilities.

    Vectorised over the draws (a draws x rows matrix) with the definitions of
    :mod:`loopml.metrics`: positive-class precision/recall/F1 and the
    rank form of ROC-AUC for binary models; macro averages over the classes present for
    multiclass ones. Above ``MAX_DRAW_ROWS`` rows the draws use a row sample and their spread is
    shrunk by sqrt(sample / rows) around their mean (the 1/sqrt(n) law).
    """
    generator = np.random.default_rng(random_state)
    rows = len(predicted)
    picked = np.arange(rows)
    if rows > MAX_DRAW_ROWS:
        picked = np.sort(generator.choice(rows, MAX_DRAW_ROWS, replace=False))
    probabilities = calibrated[picked]
    guessed = np.asarray(predicted)[picked]
    uniform = generator.random((draws, len(picked)))
    if calibrated.ndim == 1:
        truth = uniform < probabilities[None, :]
        result = _binary_draws(truth, guessed.astype(bool), scores, picked)
    else:
        cumulative = np.cumsum(probabilities, axis=1)
        truth = (uniform[:, :, None] > cumulative[None, :, :]).sum(axis=2)
        truth = np.minimum(truth, probabilities.shape[1] - 1)
        result = _multiclass_draws(truth, guessed.astype(int), probabilities.shape[1])
    shrink = np.sqrt(len(picked) / rows)
    for name, values in result.items():
        values = values[np.isfinite(values)]
        if rows > len(picked) and values.size:
            values = values.mean() + (values - values.mean()) * shrink
        result[name] = values
    return result


def _binary_draws(
    truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None, picked: np.ndarray
) -> dict[str, np.ndarray]:
    tp = (truth & flagged).sum(axis=1).astype(float)
    fp = (~truth & flagged).sum(axis=1).astype(float)
    fn = (truth & ~flagged).sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = {
            "accuracy": (truth == flagged).mean(axis=1),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }
        if scores is not None:
            from scipy.stats import rankdata

            ranks = rankdata(np.asarray(scores, dtype=float)[picked])
            positives = truth.sum(axis=1).astype(float)
            negatives = truth.shape[1] - positives
            rank_sum = truth.astype(float) @ ranks
            result["roc_auc"] = np.where(
                (positives > 0) & (negatives > 0),
                (rank_sum - positives * (positives + 1) / 2) / (positives * negatives),
                np.nan,
            )
    return result


def _multiclass_draws(
    truth: np.ndarray, guessed: np.ndarray, classes: int
) -> dict[str, np.ndarray]:
    precision, recall, f1, present = [], [], [], []
    for code in range(classes):
        actual, chosen = truth == code, guessed[None, :] == code
        tp = (actual & chosen).sum(axis=1).astype(float)
        fp = (~actual & chosen).sum(axis=1).astype(float)
        fn = (actual & ~chosen).sum(axis=1).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision.append(np.where(tp + fp > 0, tp / (tp + fp), 0.0))
            recall.append(np.where(tp + fn > 0, tp / (tp + fn), 0.0))
            f1.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
        present.append(tp + fp + fn > 0)
    mask = np.array(present, dtype=float)
    count = np.maximum(mask.sum(axis=0), 1.0)

    def macro(values: list[np.ndarray]) -> np.ndarray:
        return (np.array(values) * mask).sum(axis=0) / count

    return {
        "accuracy": (truth == guessed[None, :]).mean(axis=1),
        "precision_macro": macro(precision),
        "recall_macro": macro(recall),
        "f1_macro": macro(f1),
    }


# --------------------------------------------------------------------------- the estimator


@dataclass
class PerformanceEstimator:
    """What is stored with a model version to estimate its performance on unlabelled batches.

    Attributes:
        method: ``cbpe`` or ``dle``.
        task: ``classification`` or ``regression``.
        classes: the model's classes (``classes_``), as their text; positive class for binary.
        positive_index: column of the positive class in ``predict_proba`` (binary only).
        calibration: calibration maps (:func:`fit_calibration`), one (binary) or one per class
            (multiclass).
        calibration_resamples: the same maps fitted on bootstrap resamples of the held-out rows;
            the spread of the estimate over them is the calibration's own error.
        reference_estimated: the estimate on the held-out rows themselves (the stream
            detector's baseline: estimate against estimate, so the method's bias cancels).
        reference_realised: the realised metrics on the held-out rows.
        loss_spread: DLE: out-of-fold standard deviation of (loss - predicted loss) per row.
        rows: held-out rows the estimator was fitted on.
    """

    method: str
    task: str
    classes: list[str] = field(default_factory=list)
    positive_index: int | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)
    calibration_resamples: list[list[dict[str, Any]]] = field(default_factory=list)
    reference_estimated: dict[str, float] = field(default_factory=dict)
    reference_realised: dict[str, float] = field(default_factory=dict)
    loss_spread: dict[str, float] = field(default_factory=dict)
    rows: int = 0
    loss_models: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("loss_models")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerformanceEstimator:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, folder: Path) -> list[Path]:
        """Write the JSON (and the DLE loss models as skops files); returns the files."""
        import skops.io

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict()))
        files = [path]
        for metric, model in self.loss_models.items():
            model_path = folder / LOSS_MODEL_FILES[metric]
            skops.io.dump(model, model_path)
            files.append(model_path)
        return files

    @classmethod
    def load(cls, folder: Path) -> PerformanceEstimator:
        """Read what :meth:`save` wrote; loss models only with the types skops may trust."""
        import skops.io

        estimator = cls.from_dict(json.loads((folder / CALIBRATION_FILE).read_text()))
        for metric, name in LOSS_MODEL_FILES.items():
            path = folder / name
            if estimator.method != "dle" or not path.is_file():
                continue
            untrusted = set(skops.io.get_untrusted_types(file=path))
            if not untrusted <= LOSS_MODEL_TYPES:
                raise EstimationError(
                    f"the loss model {name} holds types loopml does not trust: "
                    f"{sorted(untrusted - LOSS_MODEL_TYPES)}"
                )
            estimator.loss_models[metric] = skops.io.load(path, trusted=sorted(untrusted))
        return estimator

    # ---------------------------------------------------------------- applying it

    def estimate_metrics(
        self, outputs: ModelOutputs, features: pd.DataFrame | None = None
    ) -> dict[str, float]:
        """Point estimates of every metric the method covers on a batch."""
        if self.method == "dle":
            losses = self.row_losses(outputs, features)
            result = {}
            if "mae" in losses:
                result["mae"] = float(np.mean(losses["mae"]))
            if "rmse" in losses:
                result["rmse"] = float(np.sqrt(max(np.mean(losses["rmse"]), 0.0)))
            return result
        calibrated, predicted, scores = self._calibrated(outputs)
        if self.positive_index is not None:
            return expected_binary_metrics(scores, calibrated, predicted)
        return expected_multiclass_metrics(calibrated, predicted)

    def estimate(
        self,
        outputs: ModelOutputs,
        features: pd.DataFrame | None = None,
        *,
        metric: str,
        level: float = LEVEL,
        one_sided_alpha: float = 0.05,
    ) -> dict[str, dict[str, float | None]]:
        """Every estimated metric with a ``level`` interval for its realised value; the judged
        ``metric`` also gets ``bound``: the one-sided (1 - ``one_sided_alpha``) bound on the
        side of degradation (upper for scores, lower for errors)."""
        values = self.estimate_metrics(outputs, features)
        rows = len(outputs.labels)
        draws: dict[str, np.ndarray] = {}
        calibration_spread: dict[str, float] = {}
        if self.method == "cbpe" and rows:
            draws = self.realised_draws(outputs)
            calibration_spread = self._calibration_spread(outputs)
        result: dict[str, dict[str, float | None]] = {}
        for name, value in values.items():
            entry = {"value": value, "lower": None, "upper": None, "standard_error": None}
            quantiles = (1 - level) / 2, 1 - (1 - level) / 2, one_sided_alpha, 1 - one_sided_alpha
            bounds = self._interval(
                name, value, draws.get(name), calibration_spread.get(name, 0.0), rows, quantiles
            )
            if bounds is not None:
                low, high, alpha_low, alpha_high, spread = bounds
                entry.update(lower=min(low, value), upper=max(high, value), standard_error=spread)
                if name == metric:
                    entry["bound"] = alpha_low if relative_bounds(name) else alpha_high
            result[name] = entry
        return result

    def row_losses(
        self, outputs: ModelOutputs, features: pd.DataFrame | None
    ) -> dict[str, np.ndarray]:
        """DLE: each row's predicted absolute error (``mae``) and squared error (``rmse``)."""
        if features is None:
            raise EstimationError("direct loss estimation needs the batch's features")
        frame = loss_model_input(features, outputs.labels)
        return {
            metric: np.clip(model.predict(frame), 0.0, None)
            for metric, model in self.loss_models.items()
        }

    def realised_draws(self, outputs: ModelOutputs) -> dict[str, np.ndarray]:
        """CBPE: each metric's realised value on label sets drawn from the calibrated
        probabilities — how far a batch's realised metric strays from its expectation even
        when the probabilities are right (the interval's label noise; the benchmark's floor)."""
        return simulated_metric_draws(*self._calibrated(outputs))

    def _calibrated(self, outputs: ModelOutputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probabilities = outputs.probabilities
        if probabilities is None:
            raise EstimationError("confidence-based estimation needs class probabilities")
        if self.positive_index is not None:
            scores = probabilities[:, self.positive_index]
            positive = outputs.classes[self.positive_index]
            flagged = is_label(outputs.labels, positive)
            return calibrated_probabilities(scores, self.calibration), flagged, scores
        calibrated = calibrated_probabilities(probabilities, self.calibration)
        return calibrated, probabilities.argmax(axis=1), probabilities.max(axis=1)

    def _interval(
        self,
        metric: str,
        value: float,
        draws: np.ndarray | None,
        calibration_spread: float,
        rows: int,
        quantiles: tuple[float, ...],
    ) -> tuple[float, ...] | None:
        from scipy.stats import norm

        if self.method == "dle":
            spread = self.loss_spread.get(metric)
            if spread is None or rows == 0:
                return None
            if metric == "mae":
                error = spread / np.sqrt(rows)
                return (
                    *(max(float(value + norm.ppf(q) * error), 0.0) for q in quantiles),
                    float(error),
                )
            # RMSE: the interval is on the mean squared error, then square-rooted.
            mse, error = value**2, spread / np.sqrt(rows)
            bounds = [float(np.sqrt(max(mse + norm.ppf(q) * error, 0.0))) for q in quantiles]
            return (*bounds, float(error / max(2 * value, 1e-12)))
        if draws is None or draws.size < DRAWS // 2:
            return None
        # Label noise (the draws) and calibration error (the resampled maps) are independent.
        spread = float(np.sqrt(np.var(draws, ddof=1) + calibration_spread**2))
        return (*(float(value + norm.ppf(q) * spread) for q in quantiles), spread)

    def _calibration_spread(self, outputs: ModelOutputs) -> dict[str, float]:
        """Standard deviation of each point estimate over the resampled calibration maps."""
        if len(self.calibration_resamples) < 2:
            return {}
        estimates = [
            PerformanceEstimator(
                method=self.method,
                task=self.task,
                classes=self.classes,
                positive_index=self.positive_index,
                calibration=maps,
            ).estimate_metrics(outputs)
            for maps in self.calibration_resamples
        ]
        return {
            name: float(np.std([e[name] for e in estimates if name in e], ddof=1))
            for name in estimates[0]
        }


def estimator_metrics(config: ProjectConfig) -> tuple[str, ...]:
    if config.task == "regression":
        return REGRESSION_METRICS
    return BINARY_METRICS if config.is_binary else MULTICLASS_METRICS


def fit_estimator(
    config: ProjectConfig,
    outputs: ModelOutputs,
    truth: pd.Series,
    features: pd.DataFrame,
    realised: dict[str, float],
    *,
    random_state: int = 0,
) -> PerformanceEstimator:
    """Fit CBPE's calibration (classification) or DLE's loss models (regression) on held-out
    rows the model never trained on.

    Raises:
        EstimationError: too few held-out rows, or a class absent from them.
    """
    known = truth.notna().to_numpy()
    if known.sum() < 20:
        raise EstimationError(f"only {int(known.sum())} labelled held-out rows: no estimator")
    realised = {k: float(v) for k, v in realised.items() if k in estimator_metrics(config)}
    if config.task == "regression":
        return _fit_dle(outputs, truth, features, realised, random_state)
    probabilities = np.asarray(outputs.probabilities)[known]
    observed = np.asarray(truth)[known]
    classes = outputs.classes
    generator = np.random.default_rng(random_state)
    resamples = [
        generator.integers(0, len(observed), len(observed)) for _ in range(CALIBRATION_RESAMPLES)
    ]
    index = _class_index(classes, config.positive_label) if config.is_binary else None
    # Binary: the positive class's map only; multiclass: one map per class (one-vs-rest).
    calibrated_columns = [index] if index is not None else list(range(len(classes)))
    columns = [
        (probabilities[:, i], is_label(observed, classes[i]).astype(float))
        for i in calibrated_columns
    ]
    maps = [fit_calibration(scores, outcomes) for scores, outcomes in columns]

    def refitted(at: np.ndarray) -> list[dict[str, Any]]:
        # The method chosen on all rows, refitted: the spread is the map's estimation error.
        return [
            fit_calibration(scores[at], outcomes[at], knots["method"])
            for (scores, outcomes), knots in zip(columns, maps, strict=True)
        ]

    estimator = PerformanceEstimator(
        method="cbpe",
        task=config.task,
        classes=[str(c) for c in classes],
        positive_index=index,
        calibration=maps,
        reference_realised=realised,
        rows=int(known.sum()),
    )
    estimator.calibration_resamples = [refitted(at) for at in resamples]
    estimator.reference_estimated = estimator.estimate_metrics(outputs)
    return estimator


def _fit_dle(
    outputs: ModelOutputs,
    truth: pd.Series,
    features: pd.DataFrame,
    realised: dict[str, float],
    random_state: int,
) -> PerformanceEstimator:
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    known = truth.notna().to_numpy()
    frame = loss_model_input(features[known], outputs.labels[known])
    error = outputs.labels[known] - truth.to_numpy(dtype=float)[known]
    targets = {"mae": np.abs(error), "rmse": error**2}
    models, spread = {}, {}
    template = loss_model(frame, random_state)
    for metric, target in targets.items():
        folds = min(3, max(2, len(frame) // 50))
        out_of_fold = cross_val_predict(clone(template), frame, target, cv=folds)
        spread[metric] = float(np.std(target - np.clip(out_of_fold, 0.0, None), ddof=1))
        models[metric] = clone(template).fit(frame, target)
    estimator = PerformanceEstimator(
        method="dle",
        task="regression",
        reference_realised=realised,
        loss_spread=spread,
        rows=int(known.sum()),
        loss_models=models,
    )
    estimator.reference_estimated = estimator.estimate_metrics(
        ModelOutputs(outputs.labels[known], None, []), features[known]
    )
    return estimator


def loss_model_input(features: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    """DLE's input: the features and the model's own prediction (errors depend on both).

    Dates become days since the epoch and flags 0/1, so the loss model sees numbers or text only.
    """
    frame = features.reset_index(drop=True).copy()
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            epoch = pd.Timestamp("1970-01-01", tz=values.dt.tz)
            frame[column] = (values - epoch).dt.total_seconds() / 86_400
        elif pd.api.types.is_bool_dtype(values):
            frame[column] = values.astype(float)
        elif not pd.api.types.is_numeric_dtype(values):
            frame[column] = values.astype(object).where(values.notna(), np.nan)
    frame[PREDICTION_COLUMN] = np.asarray(predictions, dtype=float)
    return frame


def loss_model(frame: pd.DataFrame, random_state: int) -> Any:
    """A small gradient-boosting regressor; categories ordinal-encoded (unseen ones -> NaN)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    categorical = [c for c in frame.columns if frame[c].dtype == object]
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan
    )
    return Pipeline(
        [
            (
                "columns",
                ColumnTransformer([("categorical", encoder, categorical)], remainder="passthrough"),
            ),
            (
                "loss",
                HistGradientBoostingRegressor(
                    max_iter=100,
                    learning_rate=0.05,
                    min_samples_leaf=20,
                    random_state=random_state,
                ),
            ),
        ]
    )


# --------------------------------------------------------------------------- the verdict


def estimated_verdict(
    estimates: dict[str, dict[str, float | None]],
    reference_metrics: dict[str, float],
    *,
    metric: str,
    max_drop: float,
    method: str,
    rows: int,
    min_rows: int,
) -> dict[str, Any]:
    """The estimated counterpart of :func:`loopml.monitoring.performance_verdict`.

    Degraded only when the *confident* bound (the one-sided bound on the bad side) is past
    ``max_drop``: an estimate that merely dips below it is reported, not acted on.
    """
    verdict: dict[str, Any] = {
        "method": method,
        "metric": metric,
        "rows": rows,
        "level": LEVEL,
        "estimates": estimates,
        "reference": reference_metrics.get(metric),
        "drop": None,
        "confident_drop": None,
        "max_drop": max_drop,
        "drop_units": "fraction of champion" if relative_bounds(metric) else "absolute",
        "degraded": False,
        "estimated": True,
    }
    entry = estimates.get(metric)
    if entry is None or entry.get("value") is None:
        verdict["note"] = f"{metric} cannot be estimated without labels by {method}"
        return verdict
    if rows < min_rows:
        verdict["note"] = f"only {rows} rows (< {min_rows}): no estimated verdict"
        return verdict
    if verdict["reference"] is None:
        verdict["note"] = f"the champion has no held-out {metric}"
        return verdict
    verdict["drop"] = -scaled_improvement(entry["value"], verdict["reference"], metric)
    bound = entry.get("bound")
    if bound is not None:
        verdict["confident_drop"] = -scaled_improvement(bound, verdict["reference"], metric)
        verdict["degraded"] = verdict["confident_drop"] > max_drop
    return verdict


def flat_estimates(verdict: dict[str, Any] | None) -> dict[str, float | None]:
    """``estimated_<metric>`` (+ ``_lower`` / ``_upper``) keys for the ``--json`` result."""
    flat: dict[str, float | None] = {}
    for metric, entry in ((verdict or {}).get("estimates") or {}).items():
        flat[f"estimated_{metric}"] = entry.get("value")
        flat[f"estimated_{metric}_lower"] = entry.get("lower")
        flat[f"estimated_{metric}_upper"] = entry.get("upper")
    return flat


# --------------------------------------------------------------------------- estimate vs realised


class EstimateStore:
    """Per project ``estimates.jsonl``: one line per estimate and per realised value, by batch.

    Lines are appended (``kind`` ``estimated`` or ``realised``); :meth:`pairs` joins them, the
    latest of each kind per batch winning. Unreadable lines (a torn write) are skipped.
    """

    def __init__(self, monitoring_dir: Path, project: str) -> None:
        self.path = monitoring_dir / project / "estimates.jsonl"

    def add(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def estimated_batches(self) -> set[str]:
        return {r["batch_id"] for r in self.records() if r.get("kind") == "estimated"}

    def pairs(self) -> list[dict[str, Any]]:
        """Per batch (in order of first estimate): the estimate with its realised value."""
        joined: dict[str, dict[str, Any]] = {}
        for record in self.records():
            batch = record.get("batch_id")
            if record.get("kind") == "estimated":
                joined.setdefault(batch, {}).update(
                    batch_id=batch,
                    model_version=record.get("model_version"),
                    metric=record.get("metric"),
                    method=record.get("method"),
                    estimated=record.get("value"),
                    lower=record.get("lower"),
                    upper=record.get("upper"),
                    estimated_at=record.get("at"),
                )
            elif record.get("kind") == "realised" and batch in joined:
                value = (record.get("metrics") or {}).get(joined[batch]["metric"])
                joined[batch].update(realised=value, labelled_rows=record.get("rows"))
        for pair in joined.values():
            realised, low, high = pair.get("realised"), pair.get("lower"), pair.get("upper")
            pair["within_interval"] = (
                None if realised is None or low is None else bool(low <= realised <= high)
            )
        return list(joined.values())


def estimate_record(batch_id: str, model_version: str, verdict: dict[str, Any], at: str) -> dict:
    entry = verdict["estimates"].get(verdict["metric"]) or {}
    return {
        "kind": "estimated",
        "batch_id": batch_id,
        "model_version": model_version,
        "metric": verdict["metric"],
        "method": verdict["method"],
        "value": entry.get("value"),
        "lower": entry.get("lower"),
        "upper": entry.get("upper"),
        "at": at,
    }


def realised_record(batch_id: str, metrics: dict[str, float], rows: int, at: str) -> dict:
    return {"kind": "realised", "batch_id": batch_id, "metrics": metrics, "rows": rows, "at": at}


def _class_index(classes: list[Any], label: Any) -> int:
    for index, value in enumerate(classes):
        if value == label or str(value) == str(label):
            return index
    raise EstimationError(f"the model has no class {label!r} (classes: {classes})")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 1e-12 else 0.0


# --------------------------------------------------------------------------- with the registry

ESTIMATION_DIR = "estimation"
ESTIMATOR_TAG = "loopml.estimator"


def store_estimator(
    client: Any, name: str, version: str, run_id: str, estimator: PerformanceEstimator
) -> None:
    """Log the estimator as artifacts of the version's run and name its method in a tag.

    The registered model itself is left untouched: the calibration is applied beside it.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for path in estimator.save(Path(scratch)):
            client.log_artifact(run_id, str(path), artifact_path=ESTIMATION_DIR)
    client.set_model_version_tag(name, str(version), ESTIMATOR_TAG, estimator.method)


def load_version_estimator(
    client: Any, model_version: Any, cache_dir: Path
) -> PerformanceEstimator | None:
    """The estimator stored with ``model_version``; ``None`` for versions registered without one."""
    if model_version.tags.get(ESTIMATOR_TAG) not in ("cbpe", "dle"):
        return None
    folder = cache_dir / model_version.run_id / ESTIMATION_DIR
    if not (folder / CALIBRATION_FILE).is_file():
        import shutil
        import tempfile

        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            local = client.download_artifacts(model_version.run_id, ESTIMATION_DIR, scratch)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(local, folder)
    return PerformanceEstimator.load(folder)
