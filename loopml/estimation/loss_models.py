"""DLE's loss models: a regressor of each row's absolute (and squared) error, and its input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopml.features import carried_name

PREDICTION_COLUMN = "__prediction__"


def loss_model_input(features: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    """DLE's input: the features and the model's own prediction (errors depend on both).

    Dates become days since the epoch and flags 0/1, so the loss model sees numbers or text only.
    A feature named like the prediction's column keeps its values under its carried name.
    """
    frame = features.reset_index(drop=True).rename(
        columns=lambda column: carried_name(column, (PREDICTION_COLUMN,))
    )
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
