"""Batch scoring and the prediction log (Parquet under LOOPML_HOME), kept for monitoring.

The log holds one folder per project and batch, written atomically: ``batch=<id>/part-*.parquet``
plus a ``_SUCCESS`` marker. A batch whose marker exists is never logged again, so re-scoring the
same content does not duplicate rows.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import FixedThresholdClassifier

from loopml.config import ProjectConfig
from loopml.data import check_output_path, write_parquet
from loopml.errors import DataError
from loopml.features import carried_columns, carried_name, prepare_features
from loopml.label_rule import label_index

ROW_ID = "row_id"
PREDICTION = "prediction"
PROBABILITY = "probability"
MODEL_VERSION = "model_version"
BATCH_ID = "batch_id"
SCORED_AT = "scored_at"
LABEL = "target"  # a logged row joined to its late label (loopml.labels) gains these two
LABELLED_AT = "labelled_at"
SUCCESS_MARKER = "_SUCCESS"

# loopml's own columns of a prediction-log row: a feature of the same name is logged under
# its carried name (a table may well have a column called ``prediction`` or ``row_id``).
LOG_COLUMNS = (
    ROW_ID,
    PREDICTION,
    PROBABILITY,
    MODEL_VERSION,
    BATCH_ID,
    SCORED_AT,
    LABEL,
    LABELLED_AT,
)


def logged_features(rows: pd.DataFrame, config: ProjectConfig) -> pd.DataFrame:
    """The feature columns of prediction-log rows, under the table's own names."""
    return carried_columns(rows, list(config.columns.features), LOG_COLUMNS)


def row_ids(frame: pd.DataFrame, config: ProjectConfig, batch_id: str, offset: int) -> pd.Series:
    """The id column when the config names one, else ``<batch>-<row number>``."""
    if config.id_column:
        if config.id_column not in frame.columns:
            raise DataError(f"the batch has no id column {config.id_column!r}")
        return frame[config.id_column].astype(str).reset_index(drop=True)
    numbers = np.arange(offset, offset + len(frame)).astype(str)
    return pd.Series(np.char.add(f"{batch_id}-", numbers), dtype=object)


class UniqueRowIds:
    """Refuses a batch whose id column repeats an id, chunk by chunk (64-bit hashes of the ids
    seen so far are kept, not the ids): a label for a repeated id would join every copy."""

    def __init__(self, id_column: str | None) -> None:
        self.id_column = id_column
        self.seen = np.empty(0, dtype=np.uint64)

    def check(self, chunk: pd.DataFrame) -> None:
        """Remember the ids of ``chunk``, the batch's next chunk.

        Raises:
            DataError: an id of ``chunk`` appeared before, in it or in an earlier chunk.
        """
        if not self.id_column or self.id_column not in chunk.columns:
            return  # ids loopml numbers itself are unique; row_ids names a missing column
        ids = chunk[self.id_column].astype(str).reset_index(drop=True)
        hashes = pd.util.hash_pandas_object(ids, index=False).to_numpy()
        repeated = ids.duplicated().to_numpy() | np.isin(hashes, self.seen)
        if repeated.any():
            examples = ", ".join(repr(value) for value in pd.unique(ids[repeated])[:5])
            raise DataError(
                f"the id column {self.id_column!r} repeats ids within this batch (e.g. "
                f"{examples}): each row needs its own id, or a label would join every copy; "
                "nothing was scored"
            )
        self.seen = np.union1d(self.seen, hashes)


def predict(
    model: Any, features: pd.DataFrame, config: ProjectConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's labels (a binary model applies its decision threshold inside) and the
    positive-class (or top-class) probability: the one place loopml scores with a model."""
    if config.task == "regression":
        return np.asarray(model.predict(features), dtype=float), None
    probabilities = np.asarray(model.predict_proba(features), dtype=float)
    return labels_from_probabilities(model, probabilities), scores_from_probabilities(
        model, probabilities, config
    )


def scores_from_probabilities(
    model: Any, probabilities: np.ndarray, config: ProjectConfig
) -> np.ndarray:
    """The score :func:`predict` gives beside each label: the positive class's probability
    (binary) or the most probable class's (multiclass)."""
    if config.is_binary:
        return probabilities[:, label_index(list(model.classes_), config.positive_label)]
    return probabilities.max(axis=1)


def labels_from_probabilities(model: Any, probabilities: np.ndarray) -> np.ndarray:
    """What ``model.predict`` returns, from its ``predict_proba`` output already at hand.

    One pass of the pipeline instead of two (``FixedThresholdClassifier.predict`` calls
    ``predict_proba`` itself), which halves the cost of scoring. scikit-learn's rules: a
    ``FixedThresholdClassifier`` labels a row ``pos_label`` when its probability is at least
    ``threshold``; other classifiers take the most probable class. Tests hold it equal to
    ``model.predict``.
    """
    classes = np.asarray(model.classes_)
    if isinstance(model, FixedThresholdClassifier):
        positive = label_index(list(classes), model.pos_label)
        return np.where(
            probabilities[:, positive] >= model.threshold, classes[positive], classes[1 - positive]
        )
    return classes[probabilities.argmax(axis=1)]


def check_reasons(reasons: int | None) -> None:
    """Refuse a number of reasons per row below one (``None``: no reasons asked for).

    Raises:
        DataError: ``reasons`` is below 1.
    """
    if reasons is not None and reasons < 1:
        raise DataError(f"--reasons must be at least 1 (got {reasons})")


def reasons_written(reasons: int | None, config: ProjectConfig) -> int | None:
    """How many reasons each scored row gets: ``reasons``, at most one per feature column."""
    return None if reasons is None else min(reasons, len(config.columns.features))


def score_reasons(
    model: Any,
    chunk: pd.DataFrame,
    config: ProjectConfig,
    reasons: int,
    background: pd.DataFrame | None,
) -> pd.DataFrame:
    """The ``reasons`` strongest contributions of each row's prediction, as ``loopml explain``
    computes them: ``reason_K`` (a column of the table) and ``reason_K_contribution``
    (signed, in the explained output's units), strongest first.

    Args:
        model: the model that scored ``chunk``.
        chunk: the rows scored.
        config: the project's config.
        reasons: reasons per row (at most one per feature column).
        background: the explanation's background rows (the champion's training data).

    Raises:
        DataError: ``reasons`` is below 1.
    """
    from loopml.explain import explain_rows  # shap and friends only when reasons are asked for

    check_reasons(reasons)
    explanation = explain_rows(model, chunk, config, background=background)
    return explanation.top_reasons(chunk.reset_index(drop=True), reasons, with_values=False)


def score_chunk(
    model: Any,
    chunk: pd.DataFrame,
    config: ProjectConfig,
    *,
    batch_id: str,
    model_version: str,
    offset: int,
    scored_at: datetime,
    reasons: int | None = None,
    background: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one chunk: the user's output rows and the prediction-log rows.

    With ``reasons``, the output rows end with their strongest reasons (:func:`score_reasons`,
    explained against ``background``); the log rows are the same either way. The log rows
    hold loopml's columns and each feature under its carried name (:data:`LOG_COLUMNS`).
    """
    features = prepare_features(chunk, config)
    labels, scores = predict(model, features, config)
    ids = row_ids(chunk, config, batch_id, offset)
    output = pd.DataFrame({ROW_ID: ids, PREDICTION: labels})
    if scores is not None:
        output[PROBABILITY] = scores
    output[MODEL_VERSION] = model_version
    logged = features.reset_index(drop=True).rename(
        columns=lambda column: carried_name(column, LOG_COLUMNS)
    )
    log = pd.concat([output, logged], axis=1)
    log[BATCH_ID] = batch_id
    log[SCORED_AT] = pd.Timestamp(scored_at)
    if config.time_column and config.time_column in chunk.columns:
        time_values = chunk[config.time_column].reset_index(drop=True)
        log[carried_name(config.time_column, LOG_COLUMNS)] = time_values
    if reasons is not None:
        output = pd.concat(
            [output, score_reasons(model, chunk, config, reasons, background)], axis=1
        )
    return output, log


class PredictionLog:
    """The per-project prediction log under ``root/NAME``."""

    def __init__(self, root: Path, project: str) -> None:
        self.folder = root / project

    def batch_folder(self, batch_id: str) -> Path:
        return self.folder / f"batch={batch_id}"

    def has_batch(self, batch_id: str) -> bool:
        return (self.batch_folder(batch_id) / SUCCESS_MARKER).is_file()

    def write_batch(self, batch_id: str, parts: Iterable[pd.DataFrame]) -> int:
        """Write a batch atomically (staging folder, then rename); returns rows written."""
        with self.batch_writer(batch_id) as write:
            return sum(write(part) for part in parts)

    @contextmanager
    def batch_writer(self, batch_id: str) -> Iterator[Callable[[pd.DataFrame], int]]:
        """Write a batch part by part into a staging folder; it joins the log only when the
        block ends without error (a half-written batch is never seen, nothing is re-read)."""
        staging = self.folder / f".staging-{batch_id}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True, exist_ok=True)
        counts = {"parts": 0, "rows": 0}

        def write(part: pd.DataFrame) -> int:
            write_parquet(part, staging / f"part-{counts['parts']:05d}.parquet")
            counts["parts"] += 1
            counts["rows"] += len(part)
            return len(part)

        try:
            yield write
            (staging / SUCCESS_MARKER).write_text(str(counts["rows"]))
            target = self.batch_folder(batch_id)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def batches(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(
            path.name.split("=", 1)[1]
            for path in self.folder.glob("batch=*")
            if (path / SUCCESS_MARKER).is_file()
        )

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every logged row (empty frame when nothing was scored yet)."""
        frames = []
        for batch_id in self.batches():
            for part in sorted(self.batch_folder(batch_id).glob("part-*.parquet")):
                frames.append(pd.read_parquet(part, columns=columns))
        if not frames:
            return pd.DataFrame(columns=columns or [ROW_ID, PREDICTION, MODEL_VERSION, BATCH_ID])
        return pd.concat(frames, ignore_index=True)


def write_output_chunks(chunks: Iterator[pd.DataFrame], path: Path) -> int:
    """Stream scored chunks to CSV or Parquet at ``path`` (via a temp file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    rows = 0
    writer: pq.ParquetWriter | None = None
    as_parquet = path.suffix.lower() in {".parquet", ".pq"}
    try:
        for number, chunk in enumerate(chunks):
            rows += len(chunk)
            if as_parquet:
                table = pa.Table.from_pandas(chunk, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(staging, table.schema)
                writer.write_table(table.cast(writer.schema))
            else:
                chunk.to_csv(
                    staging, mode="w" if number == 0 else "a", header=number == 0, index=False
                )
        if writer is not None:
            writer.close()
            writer = None
        if rows == 0:
            raise DataError("the batch has no rows to score")
        staging.replace(path)
    finally:
        if writer is not None:
            writer.close()
        staging.unlink(missing_ok=True)
    return rows


def now() -> datetime:
    return datetime.now(UTC)


def score_file(
    model: Any,
    source: Path,
    config: ProjectConfig,
    *,
    batch_id: str,
    model_version: str,
    out: Path | None,
    log: PredictionLog | None,
    chunk_rows: int = 100_000,
    on_chunk: Callable[[int], None] | None = None,
    reasons: int | None = None,
    background: pd.DataFrame | None = None,
) -> int:
    """Score ``source`` chunk by chunk into ``out`` and (when given) the prediction log.

    Memory stays flat: each chunk's log rows go straight to the log's staging folder, which
    joins the log only once the whole batch has been scored (a half-scored batch is never
    logged). With ``reasons``, each output row also gets its strongest reasons (see
    :func:`score_chunk`); pass the same ``background`` rows for every chunk.

    Returns:
        The number of rows scored.
    """
    from loopml.data import iter_table_chunks

    check_reasons(reasons)
    check_output_path(out)
    scored_at = now()
    with contextlib.ExitStack() as stack:
        write_log = stack.enter_context(log.batch_writer(batch_id)) if log is not None else None

        def outputs() -> Iterator[pd.DataFrame]:
            offset = 0
            unique_ids = UniqueRowIds(config.id_column)
            for chunk in iter_table_chunks(source, chunk_rows):
                unique_ids.check(chunk)
                output, log_rows = score_chunk(
                    model,
                    chunk,
                    config,
                    batch_id=batch_id,
                    model_version=model_version,
                    offset=offset,
                    scored_at=scored_at,
                    reasons=reasons,
                    background=background,
                )
                offset += len(chunk)
                if write_log is not None:
                    write_log(log_rows)
                if on_chunk is not None:
                    on_chunk(offset)
                yield output

        if out is not None:
            return write_output_chunks(outputs(), out)
        rows = sum(len(chunk) for chunk in outputs())
        if rows == 0:
            raise DataError("the batch has no rows to score")
        return rows
