"""Column handling shared by training and scoring, so both see the same dtypes."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.errors import DataError
from loopml.profiling import DEFAULT_DATE_FORMAT, date_text_format, dates_as_text

CARRIED_PREFIX = "feature:"


def carried_name(column: str, taken: Collection[str]) -> str:
    """The name a column of the user's table is stored under beside loopml's own ``taken``
    columns: its own, or ``feature:COLUMN`` when loopml uses that name.

    A name that starts with ``feature:`` already gets the prefix too, so two columns never
    meet under one name and the name can always be read back (:func:`carried_columns`).
    """
    clashes = column in taken or column.startswith(CARRIED_PREFIX)
    return f"{CARRIED_PREFIX}{column}" if clashes else column


def carried_columns(
    frame: pd.DataFrame, columns: list[str], taken: Collection[str]
) -> pd.DataFrame:
    """``columns`` of ``frame`` (stored under their :func:`carried_name`), under their own names."""
    return frame[[carried_name(column, taken) for column in columns]].set_axis(columns, axis=1)


def missing_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    return [column for column in columns if column not in frame.columns]


def prepare_features(
    frame: pd.DataFrame, config: ProjectConfig, *, compact: bool = False
) -> pd.DataFrame:
    """The model's input columns with stable dtypes: numeric as float64, categorical as strings,
    datetime as naive UTC ``datetime64`` (unparseable values become NaT).

    CSV re-reads, Parquet and SQL give the same column different dtypes (an int flag becomes
    float once a null appears); fixing them here keeps training and scoring in agreement.
    ``compact`` (a large reference to profile) keeps the same values but holds each categorical
    column as a pandas category of text (codes, not a Python string per row), and its float
    columns may be the caller's own arrays: treat the result as read-only.

    Raises:
        DataError: a feature column is missing.
    """
    absent = missing_columns(frame, config.columns.features)
    if absent:
        raise DataError(f"the batch is missing feature column(s): {', '.join(absent)}")
    prepared: dict[str, pd.Series] = {}
    for column in config.columns.numeric:
        prepared[column] = pd.to_numeric(frame[column], errors="coerce").astype(
            np.float64, copy=False
        )
    for column in config.columns.categorical:
        values = frame[column]
        if compact:
            codes = values.astype("category")
            as_text = codes.cat.categories.astype(str)
            if as_text.is_unique:  # else 1 and "1" are both there: one category as text
                prepared[column] = codes.cat.rename_categories(as_text)
                continue
        if _is_text(values):
            # Converting text to text cost more than the rest of this function on a 1M-row
            # batch; categories of text become text that shares the categories' strings.
            prepared[column] = values.astype(object)
            continue
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.astype(object)  # categories of numbers or flags: their text below
        prepared[column] = values.where(values.isna(), values.astype(str)).astype(object)
    for column in config.columns.datetime:
        prepared[column] = as_datetime(frame[column])
    # Built in one go (inserting column by column, then reordering, copied every column twice).
    # ``compact`` output is only read: its float columns may share the caller's memory.
    return pd.DataFrame(
        prepared, index=frame.index, columns=config.columns.features, copy=not compact
    )


def _is_text(values: pd.Series) -> bool:
    """Python strings (and missing values), or pandas categories of them."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return pd.api.types.infer_dtype(values.cat.categories, skipna=True) == "string"
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "string"


def as_datetime(values: pd.Series) -> pd.Series:
    """Dates and times of any form (text, epoch-free datetimes, time zones) as naive UTC.

    Mixed formats and offsets are normalised to UTC so one column read from CSV, Parquet or SQL
    gives the same instants; values that are not dates become NaT.
    """
    if isinstance(values.dtype, pd.PeriodDtype):
        values = values.dt.to_timestamp()
    if pd.api.types.is_datetime64_any_dtype(values) and getattr(values.dt, "tz", None) is None:
        return values.astype("datetime64[ns]")
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    return parsed.dt.tz_convert(None).astype("datetime64[ns]")


def align_dtypes(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose columns take the dtypes they have in ``reference``.

    Logged rows hold features as :func:`prepare_features` left them (categories as text, so a
    boolean flag reads ``"True"``); before they join the reference table for retraining, they go
    back to the reference's types, or the joined column would mix both and fail its suite.
    """
    aligned = frame.copy()
    for column in frame.columns.intersection(reference.columns):
        wanted = reference[column].dtype
        values = frame[column]
        if values.dtype == wanted:
            continue
        if pd.api.types.is_bool_dtype(wanted):
            text = values.astype(str).str.strip().str.lower()
            aligned[column] = values.where(values.isna(), text.isin({"true", "1", "1.0"}))
            if not values.isna().any():
                aligned[column] = aligned[column].astype(bool)
        elif pd.api.types.is_numeric_dtype(wanted):
            numbers = pd.to_numeric(values, errors="coerce")
            whole = numbers.notna().all() and bool((numbers % 1 == 0).all())
            if pd.api.types.is_integer_dtype(wanted) and whole:
                # Logged as float64; back to integers, or the retrained model's signature would
                # declare the column double and mlflow.pyfunc would refuse the users' int64 table.
                numbers = numbers.astype(wanted)
            aligned[column] = numbers
        elif pd.api.types.is_datetime64_any_dtype(wanted):
            aligned[column] = as_datetime(values)
        elif pd.api.types.is_datetime64_any_dtype(values.dtype):
            # Dates logged as datetimes join a reference that holds them as text: written in
            # the reference's format, or the joined table would fail the suite's format check.
            date_format = date_text_format(reference[column]) or DEFAULT_DATE_FORMAT
            aligned[column] = dates_as_text(values, date_format)
    return aligned


def prepare_target(frame: pd.DataFrame, config: ProjectConfig) -> pd.Series:
    """The target in the form the model learns it: floats for regression, labels as in config.

    Labels keep the config's type (a YAML ``positive_label: 'Yes'`` matches string values,
    ``1`` matches integers), so CSV and Parquet reads of the same table agree.

    Raises:
        DataError: the target column is missing or has nulls only.
    """
    if config.target not in frame.columns:
        raise DataError(f"the table has no target column {config.target!r}")
    target = frame[config.target]
    if config.task == "regression":
        return pd.to_numeric(target, errors="coerce").astype(np.float64)
    labels = config.classes or [config.positive_label]
    label_type = type(labels[0])
    if label_type is str:
        return target.where(target.isna(), target.astype(str))
    if label_type is bool:
        return target.map(lambda v: v if pd.isna(v) else str(v).strip().lower() in {"true", "1"})
    if label_type in (int, float):
        return pd.to_numeric(target, errors="coerce")
    return target


def labelled_rows(frame: pd.DataFrame, config: ProjectConfig) -> pd.DataFrame:
    """Rows whose target is known (training ignores rows with a missing label)."""
    target = prepare_target(frame, config)
    return frame.loc[target.notna()]


def split_holdout(frame: pd.DataFrame, config: ProjectConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and held-out test rows: the latest rows when the config names a time column,
    else a random split, stratified by the target for classification.

    Raises:
        DataError: too few labelled rows (or too few per class) to hold any out.
    """
    from sklearn.model_selection import train_test_split

    test_size = config.split.test_size
    if len(frame) < 20:
        raise DataError(f"only {len(frame)} labelled rows: at least 20 are needed to train")
    if config.time_column:
        if config.time_column not in frame.columns:
            raise DataError(f"the table has no time column {config.time_column!r}")
        # Sorted by position, not by a helper column: any name could be one of the table's.
        times = pd.to_datetime(frame[config.time_column], errors="coerce").reset_index(drop=True)
        ordered = frame.iloc[times.sort_values(kind="stable").index]
        cut = int(round(len(ordered) * (1 - test_size)))
        return ordered.iloc[:cut], ordered.iloc[cut:]
    stratify = None
    if config.task == "classification":
        target = prepare_target(frame, config)
        counts = target.value_counts()
        if counts.min() >= 2 and len(frame) * test_size >= len(counts):
            stratify = target
    train, test = train_test_split(
        frame, test_size=test_size, random_state=config.split.random_state, stratify=stratify
    )
    return train, test
