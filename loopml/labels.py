"""Late ground truth: labels joined to logged predictions, and labelled batches for retraining.

Labels arrive as a table of row id + target. They are stored under LOOPML_HOME as Parquet and
joined to the prediction log on the row id, so performance can be computed per model version.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.data import frame_hash, write_parquet
from loopml.errors import DataError
from loopml.features import carried_columns, carried_name, prepare_target
from loopml.label_rule import label_keys
from loopml.scoring import (
    LABEL,
    LABELLED_AT,
    MODEL_VERSION,
    PREDICTION,
    PROBABILITY,
    ROW_ID,
    SCORED_AT,
    PredictionLog,
    logged_features,
)

RECEIVED_AT = "received_at"


def id_column_of(config: ProjectConfig) -> str:
    """The column label files use for row ids: the config's id column, else ``row_id``."""
    return config.id_column or ROW_ID


class LabelStore:
    """Labels and labelled batches of one project under ``root/NAME``."""

    def __init__(self, root: Path, project: str) -> None:
        self.folder = root / project

    def add_labels(self, labels: pd.DataFrame) -> Path:
        """Store ``row_id, target, labelled_at`` rows (idempotent on content: the same labels
        sent again are not stored twice, whenever they arrive)."""
        content = labels.drop(columns=[LABELLED_AT], errors="ignore")
        path = self.folder / "labels" / f"labels-{frame_hash(content)}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            labels.to_parquet(tmp, index=False)
            tmp.replace(path)
        return path

    def labels(self) -> pd.DataFrame:
        files = sorted((self.folder / "labels").glob("labels-*.parquet"))
        if not files:
            return pd.DataFrame(columns=[ROW_ID, LABEL, LABELLED_AT])
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        # A later label for the same row corrects an earlier one.
        return frame.sort_values(LABELLED_AT, kind="stable").drop_duplicates(ROW_ID, keep="last")

    def add_labelled_batch(self, frame: pd.DataFrame, batch_id: str) -> Path:
        """Keep a batch that arrived with its target (features + target) for retraining; a
        column named like the arrival time is kept under its carried name."""
        path = self.folder / "batches" / f"batch={batch_id}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            stamped = frame.rename(columns=lambda column: carried_name(column, (RECEIVED_AT,)))
            stamped[RECEIVED_AT] = pd.Timestamp(datetime.now(UTC))
            tmp = path.with_suffix(".tmp")
            write_parquet(stamped, tmp)
            tmp.replace(path)
        return path

    def labelled_batches(self) -> pd.DataFrame:
        files = sorted((self.folder / "batches").glob("batch=*.parquet"))
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def known_classes(config: ProjectConfig, suite_json: dict | None) -> list[Any] | None:
    """The target classes the project knows: the config's (multiclass), else the value set the
    suite expects of the target (the model learned from data that passed it); ``None`` for
    regression or when neither names them."""
    if config.task != "classification":
        return None
    if config.classes:
        return list(config.classes)
    for expectation in (suite_json or {}).get("expectations", []):
        kwargs = expectation.get("kwargs") or {}
        if (
            expectation.get("type") == "expect_column_values_to_be_in_set"
            and kwargs.get("column") == config.target
        ):
            return list(kwargs.get("value_set") or []) or None
    return None


def parse_labels(
    frame: pd.DataFrame,
    config: ProjectConfig,
    known_ids: set[str],
    classes: list[Any] | None = None,
) -> pd.DataFrame:
    """Check a label table and normalise it to ``row_id, target, labelled_at``.

    Args:
        classes: the target classes the model knows (:func:`known_classes`); a label outside
            them is refused.

    Raises:
        DataError: the id or target column is missing, a target is empty or a class the model
            never knew, or row ids are unknown to the prediction log (then nothing is stored:
            fix the file and send it again).
    """
    id_column = id_column_of(config)
    missing = [c for c in (id_column, config.target) if c not in frame.columns]
    if missing:
        raise DataError(
            f"the label file needs columns {id_column!r} and {config.target!r}; "
            f"missing: {', '.join(missing)}"
        )
    ids = frame[id_column].astype(str)
    target = prepare_target(frame, config)
    if target.isna().any():
        raise DataError(f"{int(target.isna().sum())} label rows have no {config.target!r} value")
    if classes:
        known_keys = set(label_keys(classes))
        unknown_rows = ~pd.Series(label_keys(target), index=target.index).isin(known_keys)
        if unknown_rows.any():
            unknown_classes = ", ".join(repr(v) for v in sorted(set(target[unknown_rows]), key=str))
            known = ", ".join(repr(v) for v in sorted(classes, key=str))
            raise DataError(
                f"{int(unknown_rows.sum())} label rows have a {config.target!r} class the model "
                f"never knew: {unknown_classes} (known: {known}); nothing was stored"
            )
    unknown = sorted(set(ids) - known_ids)
    if unknown:
        examples = ", ".join(unknown[:5])
        raise DataError(
            f"{len(unknown)} of {len(ids)} row ids were never scored for project "
            f"{config.name!r} (e.g. {examples}); nothing was stored"
        )
    if ids.duplicated().any():
        raise DataError(f"{int(ids.duplicated().sum())} row ids appear more than once")
    return pd.DataFrame(
        {ROW_ID: ids.to_numpy(), LABEL: target.to_numpy(), LABELLED_AT: pd.Timestamp.now(tz=UTC)}
    )


def joined_predictions(log: PredictionLog, store: LabelStore) -> pd.DataFrame:
    """Logged predictions that have a label (``target`` column added)."""
    labels = store.labels()
    if labels.empty:
        return pd.DataFrame()
    predictions = log.read()
    if predictions.empty:
        return pd.DataFrame()
    predictions[ROW_ID] = predictions[ROW_ID].astype(str)
    # A batch scored twice by different versions keeps both rows; each is judged separately.
    return predictions.merge(labels[[ROW_ID, LABEL, LABELLED_AT]], on=ROW_ID, how="inner")


def performance_by_version(
    joined: pd.DataFrame, config: ProjectConfig, metrics_fn: Any
) -> dict[str, dict[str, Any]]:
    """Metrics per model version over labelled predictions (``metrics_fn`` computes them)."""
    result: dict[str, dict[str, Any]] = {}
    if joined.empty:
        return result
    for version, rows in joined.groupby(MODEL_VERSION):
        probabilities = rows[PROBABILITY].to_numpy() if PROBABILITY in rows else None
        result[str(version)] = {
            "rows": len(rows),
            "metrics": metrics_fn(rows[LABEL], rows[PREDICTION], probabilities),
        }
    return result


def recent_window(
    joined: pd.DataFrame,
    batches: pd.DataFrame,
    config: ProjectConfig,
    *,
    now: datetime | None = None,
) -> pd.DataFrame:
    """The most recent labelled rows (features + target), newest ``window_rows`` at most,
    none older than ``max_age_days``."""
    features = config.columns.features
    parts, times = [], []
    if not joined.empty:
        part = logged_features(joined, config)
        part[config.target] = joined[LABEL].to_numpy()
        parts.append(part)
        times.append(pd.to_datetime(joined[SCORED_AT], utc=True))
    stored = [*features, config.target]
    kept = [c for c in stored if carried_name(c, (RECEIVED_AT,)) in batches.columns]
    if not batches.empty and config.target in kept:
        parts.append(carried_columns(batches, kept, (RECEIVED_AT,)))
        times.append(pd.to_datetime(batches[RECEIVED_AT], utc=True))
    if not parts:
        return pd.DataFrame(columns=stored)
    window = pd.concat(parts, ignore_index=True)
    # The times stay beside the rows, not in a column: any name could be a feature's.
    row_times = pd.concat(times, ignore_index=True)
    keep = np.ones(len(window), dtype=bool)
    if config.retraining.max_age_days is not None:
        cutoff = (now or datetime.now(UTC)) - timedelta(days=config.retraining.max_age_days)
        keep = (row_times >= pd.Timestamp(cutoff)).to_numpy()
    newest = row_times[keep].sort_values(kind="stable").tail(config.retraining.window_rows).index
    return window.loc[newest].reset_index(drop=True)


def split_recent_window(
    window: pd.DataFrame,
    columns: list[str],
    *,
    evaluation_share: float,
    min_evaluation_rows: int,
    held_out: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The newest ``evaluation_share`` of the (time-ordered) window judges, the rest trains.

    A row identical (on ``columns``: features and target) to a judging row or to a row of
    ``held_out`` (the frozen held-out set) never trains: the same rows can arrive twice (a
    batch monitored with its target and also labelled later, a re-sent file), and a challenger
    that learned the rows it is judged on would always look better than the champion.

    Returns:
        ``(train, evaluation, dropped)``: ``dropped`` counts the window rows kept out of training.
    """
    evaluation_rows = int(len(window) * evaluation_share)
    if evaluation_rows < min_evaluation_rows:
        evaluation_rows = 0
    cut = len(window) - evaluation_rows
    older, evaluation = window.iloc[:cut], window.iloc[cut:]
    if older.empty:
        return older, evaluation, 0
    judged = [evaluation]
    if held_out is not None:
        judged.append(held_out)
    train, dropped = drop_copies(older, judged, columns)
    return train, evaluation, dropped


def drop_copies(
    frame: pd.DataFrame, judged: list[pd.DataFrame], columns: list[str]
) -> tuple[pd.DataFrame, int]:
    """``frame`` without the rows identical (on ``columns``) to a row of any ``judged`` frame.

    Rows a model is judged on must never be rows it learned from, copies included.

    Returns:
        ``(kept, dropped)``.
    """
    usable = [f for f in judged if not f.empty and set(columns) <= set(f.columns)]
    if frame.empty or not usable:
        return frame, 0
    seen = pd.Index(pd.concat([_row_keys(f, columns) for f in usable]))
    keep = ~_row_keys(frame, columns).isin(seen).to_numpy()
    return frame[keep], int((~keep).sum())


def _row_keys(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One hash per row of ``columns``: numbers as floats, the rest as text (1 and 1.0 agree,
    whichever file format the rows came through)."""
    values = pd.DataFrame(
        {
            column: (
                frame[column].astype("float64")
                if pd.api.types.is_numeric_dtype(frame[column])
                and not pd.api.types.is_bool_dtype(frame[column])
                else frame[column]
            ).astype(str)
            for column in columns
        }
    )
    return pd.util.hash_pandas_object(values, index=False)
