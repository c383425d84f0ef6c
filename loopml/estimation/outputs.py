"""What a model says about a batch: the one place the estimator asks a model for its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.label_rule import is_label


@dataclass
class ModelOutputs:
    """What the model says about a batch: labels and, for classifiers, class probabilities.

    ``probabilities`` columns follow ``classes`` (the model's ``classes_``).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    classes: list[Any]
    _flags: dict[Any, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def flagged(self, label: Any) -> np.ndarray:
        """Which rows the model labelled ``label`` (loopml's label rule), worked out once: the
        estimator asks again for each of its resampled calibration maps."""
        if label not in self._flags:
            self._flags[label] = is_label(self.labels, label)
        return self._flags[label]


def model_outputs(model: Any, features: pd.DataFrame, config: ProjectConfig) -> ModelOutputs:
    """The one place the estimator asks a model for its outputs: one ``predict_proba`` pass,
    labels read off it by loopml's scoring rule (the threshold inside the model applies)."""
    from loopml.scoring import labels_from_probabilities

    if config.task == "regression":
        return ModelOutputs(np.asarray(model.predict(features), dtype=float), None, [])
    probabilities = np.asarray(model.predict_proba(features), dtype=float)
    labels = labels_from_probabilities(model, probabilities)
    return ModelOutputs(np.asarray(labels), probabilities, list(model.classes_))
