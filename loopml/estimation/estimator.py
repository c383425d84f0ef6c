"""The performance estimator stored with a model version: applied to a batch, saved, loaded."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.errors import LoopmlError
from loopml.estimation.calibration import calibrated_probabilities
from loopml.estimation.expected_metrics import (
    DRAWS,
    expected_binary_metrics,
    expected_multiclass_metrics,
    simulated_metric_draws,
)
from loopml.estimation.loss_models import loss_model_input
from loopml.estimation.outputs import ModelOutputs
from loopml.gate import relative_bounds
from loopml.metrics import is_bounded

CALIBRATION_FILE = "estimator.json"
LOSS_MODEL_FILES = {"mae": "loss_absolute.skops", "rmse": "loss_squared.skops"}
LEVEL = 0.95
# skops refuses types it was not told to trust; these are what a HistGradientBoosting loss model
# behind an OrdinalEncoder needs (checked at load, never "trust whatever the file holds").
LOSS_MODEL_TYPES = {
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
}


class EstimationError(LoopmlError):
    """The estimator cannot be fitted or applied (e.g. a single class in the held-out rows)."""


@dataclass
class PerformanceEstimator:
    """What is stored with a model version to estimate its performance on unlabelled batches.

    Attributes:
        method: ``cbpe`` or ``dle``.
        task: ``classification`` or ``regression``.
        classes: the model's classes (``classes_``), as their text; positive class for binary.
        positive_index: column of the positive class in ``predict_proba`` (binary only).
        calibration: calibration maps
            (:func:`~loopml.estimation.calibration.fit_calibration`), one (binary) or one per
            class (multiclass).
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
                entry.update(
                    lower=_on_scale(name, min(low, value)),
                    upper=_on_scale(name, max(high, value)),
                    standard_error=spread,
                )
                if name == metric:
                    one_sided = alpha_low if relative_bounds(name) else alpha_high
                    entry["bound"] = _on_scale(name, one_sided)
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
            flagged = outputs.flagged(outputs.classes[self.positive_index])
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


def _on_scale(metric: str, value: float) -> float:
    """``value`` within the values ``metric`` can take: an interval drawn around an estimate
    near 1 (accuracy 0.9999) must not promise 1.0001. Every estimated metric is at least 0
    (R² aside) and a bounded one at most 1."""
    if metric != "r2":
        value = max(value, 0.0)
    return min(value, 1.0) if is_bounded(metric) else value
