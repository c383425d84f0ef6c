"""Profiling a table: task, column roles, and a suggested Great Expectations suite.

GX 1.x ships no profiler, so the suite a user reviews after ``loopml init`` is written here from
the reference table: columns present, numeric dtypes, null rates, category sets, numeric ranges
with a tolerance, and for date columns the format their text is written in and a date range with
a tolerance. Every expectation carries ``meta["loopml"]["role"]`` (``target``, ``feature``,
``id``) so callers can skip target checks for scoring batches that have no labels yet.

Column roles (decided here, written to the config, editable by the user):

- numeric: numeric dtypes (integers included, also low-cardinality 0/1 flags: they work as numbers
  for every model family and stay integers through a CSV round-trip), plus text columns whose
  non-null values parse as numbers for at least 99 % of rows (``Profile.coerce_numeric``: read
  them through :func:`coerce_numeric`).
- categorical: text, ``category`` and ``bool`` columns, high-cardinality text included (the
  pipeline target-encodes columns with many levels, cross-fitted, so they cannot leak).
- datetime: datetime dtypes and dates stored as text (the pipeline derives their parts and
  elapsed time).
- excluded (with a reason): all-null, constant, id-like, time spans, nested values, and the
  configured id and time columns.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from loopml.errors import DataError
from loopml.label_rule import find_label

if TYPE_CHECKING:
    from loopml.config import ProjectConfig

TaskKind = Literal["classification", "regression"]

NUMERIC_PARSE_SHARE = 0.99  # a text column is numeric when this share of its values parse
MAX_CLASSIFICATION_INTEGERS = 10  # integer targets with at most this many values are classes
HIGH_CARDINALITY_SHARE = 0.5  # text with more distinct values than this share of rows is free text
HIGH_CARDINALITY_MIN_ROWS = 50  # ... judged only on tables at least this long
UNIQUE_ID_MIN_ROWS = 20  # unique-per-row text counts as an id on tables at least this long
DATETIME_SAMPLE_ROWS = 1_000
PARSE_SAMPLE_ROWS = 2_000

# Values that name the "interesting" class of a binary target, compared case-insensitively.
POSITIVE_NAMES = (
    "yes",
    "y",
    "true",
    "t",
    "1",
    "1.0",
    "positive",
    "pos",
    "churn",
    "churned",
    "fraud",
    "default",
    "spam",
    "bad",
    "malignant",
    "failure",
    "fail",
    "abnormal",
    "anomaly",
)

ID_NAME_PATTERN = re.compile(r"(^|[_\W])(id|uuid|guid|key)$|^(id|uuid|guid)([_\W]|$)|[a-z]Id$")
DECIMAL_COMMA_PATTERN = r"[+-]?\d+,\d+"  # '1,5', '-79,85' (European exports)
DATE_TEXT_PATTERN = re.compile(
    r"^\s*(\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})"
)

# Suite tolerances (the user may edit the written suite).
NULL_RATE_SLACK = 0.02  # allowed rise of the null rate, absolute ...
MAX_NULL_RATE_FOR_CHECK = 0.5  # ... no null check on columns already mostly null
CATEGORY_SET_MOSTLY = 0.99  # up to 1 % unseen categories pass (new rare levels are normal)
MAX_CATEGORIES_FOR_SET = 100  # more levels than this: no category-set expectation
# Bounds widen by half the observed range on each side: the suite is there to stop broken
# data (unit errors, sentinels, sign flips), not to quarantine a market that moved; drift is
# what monitoring measures. A column never negative in the reference stays bounded at 0.
RANGE_TOLERANCE = 0.5
RANGE_MOSTLY = 0.99
# Dates: text must be written as in the reference (a value in another format is read as another
# day, or not at all, by the model), and the dates, as the model reads them, must fall within the
# reference's range widened like numeric ranges, but by at least five years: batches keep
# arriving after training, and the bounds are there to stop sentinels (1900-01-01, 9999-12-31).
DATE_FORMAT_MOSTLY = 0.99
DATE_RANGE_MIN_MARGIN = pd.Timedelta(days=1826)
# Text loopml writes for datetimes when a date column has no text format to follow.
DEFAULT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT_GUESSES = 20  # values a date column's format is guessed from
# pandas dtypes (and Python types, for object columns holding numbers) a numeric column may have:
# int vs float and nullable dtypes all pass, so a CSV re-read or a column gaining nulls is fine.
NUMERIC_TYPE_LIST = [
    "int",
    "float",
    *[f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)],
    "float16",
    "float32",
    "float64",
    *[f"{kind}{bits}Dtype" for kind in ("Int", "UInt") for bits in (8, 16, 32, 64)],
    "Float32Dtype",
    "Float64Dtype",
]


@dataclass
class Profile:
    """What :func:`infer_profile` found out about a table.

    Attributes:
        task: ``classification`` or ``regression``.
        positive_label: the positive class of a binary target (``None`` otherwise).
        classes: the sorted classes of a multiclass target (``None`` otherwise).
        numeric: numeric feature columns.
        categorical: categorical feature columns.
        datetime: date and time feature columns.
        excluded: columns that are not features, each with the reason.
        notes: human sentences about the decisions taken.
        coerce_numeric: text columns in ``numeric`` that must go through :func:`coerce_numeric`.
    """

    task: TaskKind
    positive_label: Any
    classes: list[Any] | None
    numeric: list[str]
    categorical: list[str]
    excluded: dict[str, str]
    notes: list[str]
    coerce_numeric: list[str] = field(default_factory=list)
    datetime: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.datetime]


def infer_profile(
    frame: pd.DataFrame,
    target: str,
    *,
    task: TaskKind | None = None,
    positive_label: Any = None,
    id_column: str | None = None,
    time_column: str | None = None,
) -> Profile:
    """Infer the task, the target's classes and every column's role.

    Args:
        frame: the reference table, as read (text columns holding numbers are detected).
        target: the column to predict.
        task: force ``classification`` or ``regression`` instead of inferring it.
        positive_label: the positive class of a binary target (matched by its text, so ``"1"``
            finds an integer ``1``); inferred when ``None``.
        id_column: a row-id column, kept out of the features.
        time_column: an event-time column, kept out of the features.

    Raises:
        DataError: the target or a named column is missing, the target is unusable for the task,
            the positive label is not a target value, or no feature column is left.
    """
    for role, column in (
        ("target", target),
        ("id column", id_column),
        ("time column", time_column),
    ):
        if column is not None and column not in frame.columns:
            raise DataError(
                f"the {role} {column!r} is not a column of the table{_closest(column, frame)}"
            )
    target_values = frame[target]
    if target_values.notna().sum() == 0:
        raise DataError(f"the target {target!r} has no values (every row is null)")
    notes: list[str] = []
    missing_targets = int(target_values.isna().sum())
    if missing_targets:
        notes.append(f"{missing_targets} rows have no target value")

    resolved_task = task or _infer_task(target_values)
    if task is None:
        notes.append(f"task inferred as {resolved_task} from the target {target!r}")
    if resolved_task == "regression" and not _is_numeric_dtype(target_values):
        raise DataError(
            f"the target {target!r} is not numeric (dtype {target_values.dtype}), "
            "so it cannot be used for regression; use --task classification"
        )
    resolved_positive, classes = None, None
    if resolved_task == "classification":
        resolved_positive, classes = _resolve_classes(target_values, target, positive_label, notes)
    elif positive_label is not None:
        raise DataError(f"a positive label ({positive_label!r}) only applies to classification")

    numeric, categorical, dates, coerce, excluded = [], [], [], [], {}
    for column in frame.columns:
        if column == target:
            continue
        if column == id_column:
            excluded[column] = "the id column"
            continue
        if column == time_column:
            excluded[column] = "the time column"
            continue
        role, reason = _column_role(column, frame[column])
        if role == "numeric":
            numeric.append(column)
        elif role == "coerce":
            numeric.append(column)
            coerce.append(column)
            notes.append(f"'{column}' holds numbers stored as text: read it as numeric")
        elif role == "categorical":
            categorical.append(column)
            if reason:
                notes.append(f"'{column}': {reason}")
        elif role == "datetime":
            dates.append(column)
            notes.append(f"'{column}' holds dates: the model uses their parts and elapsed time")
        else:
            excluded[column] = reason
            notes.append(f"excluded '{column}': {reason}")
    if not numeric and not categorical and not dates:
        reasons = "; ".join(f"{column}: {reason}" for column, reason in excluded.items())
        raise DataError(
            f"no usable feature columns besides the target {target!r}"
            + (f" (excluded: {reasons})" if reasons else "")
        )
    return Profile(
        task=resolved_task,
        positive_label=resolved_positive,
        classes=classes,
        numeric=numeric,
        categorical=categorical,
        excluded=excluded,
        notes=notes,
        coerce_numeric=coerce,
        datetime=dates,
    )


def coerce_numeric(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A copy of ``frame`` with ``columns`` converted to numbers (unparseable values become NaN)."""
    present = [column for column in columns if column in frame.columns]
    if not present:
        return frame.copy()
    return frame.assign(
        **{column: pd.to_numeric(frame[column], errors="coerce") for column in present}
    )


def suggest_suite(frame: pd.DataFrame, config: ProjectConfig) -> dict:
    """Suggest a GX 1.x expectation suite (as a JSON dict) from the reference table.

    The dict loads back with ``gx.ExpectationSuite(**suite_json)``. Its ``meta["loopml"]``
    names the target and the text columns to coerce to numbers before validating
    (:func:`loopml.validation.validate_frame` does it).

    Args:
        frame: the reference table as read (before :func:`coerce_numeric`).
        config: the project config (target, task, columns).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    coerce = [c for c in config.columns.numeric if c in frame.columns and _needs_coercion(frame[c])]
    if coerce:
        frame = coerce_numeric(frame, coerce)
    row_count = len(frame)
    expectations: list[Any] = []

    def meta(role: str, column: str) -> dict:
        return {"loopml": {"role": role, "column": column}}

    if config.id_column:
        expectations.append(
            gxe.ExpectColumnToExist(column=config.id_column, meta=meta("id", config.id_column))
        )

    for column in config.columns.features:
        if column not in frame.columns:
            raise DataError(f"the feature {column!r} of the config is not a column of the table")
        values = frame[column]
        expectations.append(gxe.ExpectColumnToExist(column=column, meta=meta("feature", column)))
        expectations.extend(_null_expectation(values, column, meta("feature", column)))
        if column in config.columns.numeric:
            expectations.append(
                gxe.ExpectColumnValuesToBeInTypeList(
                    column=column, type_list=NUMERIC_TYPE_LIST, meta=meta("feature", column)
                )
            )
            expectations.extend(_range_expectation(values, column, meta("feature", column)))
        elif column in config.columns.datetime:
            expectations.extend(_date_expectations(values, column, meta("feature", column)))
        elif column in config.columns.categorical:
            categories = _distinct(values)
            if 0 < len(categories) <= MAX_CATEGORIES_FOR_SET:
                expectations.append(
                    gxe.ExpectColumnValuesToBeInSet(
                        column=column,
                        value_set=categories,
                        mostly=CATEGORY_SET_MOSTLY,
                        meta=meta("feature", column),
                    )
                )

    target = config.target
    if target not in frame.columns:
        raise DataError(
            f"the target {target!r} is not a column of the table{_closest(target, frame)}"
        )
    target_values = frame[target]
    expectations.append(gxe.ExpectColumnToExist(column=target, meta=meta("target", target)))
    expectations.extend(_null_expectation(target_values, target, meta("target", target)))
    if config.task == "classification":
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=target, value_set=_distinct(target_values), meta=meta("target", target)
            )
        )
    else:
        expectations.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=target, type_list=NUMERIC_TYPE_LIST, meta=meta("target", target)
            )
        )

    suite = gx.ExpectationSuite(
        name=config.name,
        expectations=expectations,
        meta={
            "loopml": {
                "project": config.name,
                "target": target,
                "task": config.task,
                "coerce_numeric": coerce,
                "reference_rows": row_count,
                "tolerances": {
                    "null_rate_slack": NULL_RATE_SLACK,
                    "category_set_mostly": CATEGORY_SET_MOSTLY,
                    "range_tolerance": RANGE_TOLERANCE,
                    "range_mostly": RANGE_MOSTLY,
                    "date_format_mostly": DATE_FORMAT_MOSTLY,
                    "date_range_min_margin_days": DATE_RANGE_MIN_MARGIN.days,
                },
            }
        },
    )
    return _json_safe(suite.to_json_dict())


def suite_hash(suite_json: dict) -> str:
    """A stable hash of a suite: canonical JSON, without the ids GX assigns on each load."""
    canonical = json.dumps(
        _strip_ids(suite_json), sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# --- task and target ---------------------------------------------------------------------------


def _infer_task(target_values: pd.Series) -> TaskKind:
    if not _is_numeric_dtype(target_values):
        return "classification"
    observed = target_values.dropna()
    distinct_count = observed.nunique()
    if distinct_count <= 2:
        return "classification"
    whole_numbers = bool(np.all(np.mod(observed.to_numpy(dtype=float), 1) == 0))
    # A few integer values on a table much longer than that look like classes, not amounts.
    if (
        whole_numbers
        and distinct_count <= MAX_CLASSIFICATION_INTEGERS
        and distinct_count <= len(observed) / 2
    ):
        return "classification"
    return "regression"


def _resolve_classes(
    target_values: pd.Series, target: str, positive_label: Any, notes: list[str]
) -> tuple[Any, list[Any] | None]:
    counts = target_values.dropna().value_counts()
    classes = _sorted_values([_native(value) for value in counts.index])
    if len(classes) < 2:
        raise DataError(
            f"the target {target!r} has a single class ({classes[0]!r}); "
            "classification needs at least two"
        )
    if positive_label is not None:
        matched = find_label(classes, positive_label)
        if matched is None:
            raise DataError(
                f"the positive label {positive_label!r} is not a value of the target {target!r} "
                f"(values: {', '.join(repr(value) for value in classes[:10])})"
            )
        if len(classes) > 2:
            raise DataError(
                f"a positive label applies to a binary target, but {target!r} has "
                f"{len(classes)} classes"
            )
        return matched, None
    if len(classes) > 2:
        notes.append(f"multiclass target with {len(classes)} classes")
        if len(classes) > 50:
            notes.append(
                "that many classes suggests a regression target: consider --task regression"
            )
        return None, classes
    by_name = [value for value in classes if str(value).strip().lower() in POSITIVE_NAMES]
    if len(by_name) == 1:
        positive = by_name[0]
        notes.append(f"positive label {positive!r} chosen by its name")
    else:
        # The minority class is usually the event worth predicting; ties go to the larger value.
        smallest = counts.min()
        positive = _sorted_values([_native(v) for v in counts.index if counts[v] == smallest])[-1]
        notes.append(f"positive label {positive!r} chosen as the minority class")
    return positive, None


# --- column roles ------------------------------------------------------------------------------


def _column_role(column: str, values: pd.Series) -> tuple[str, str]:
    """One of numeric / coerce / categorical / datetime / excluded, with a reason or note."""
    row_count = len(values)
    observed = values.dropna()
    if observed.empty:
        return "excluded", "all null"
    if pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.PeriodDtype):
        return "datetime", ""
    if pd.api.types.is_timedelta64_dtype(values):
        return "excluded", "time span (timedelta)"
    try:
        distinct_count = observed.nunique()
    except TypeError:  # unhashable values (lists, dicts)
        return "excluded", "holds nested values (lists or mappings)"
    if distinct_count <= 1:
        return "excluded", f"constant (only {_native(observed.iloc[0])!r})"
    unique_per_row = distinct_count == row_count
    if pd.api.types.is_bool_dtype(values):
        return "categorical", ""
    if _is_numeric_dtype(values):
        if (
            pd.api.types.is_integer_dtype(values)
            and unique_per_row
            and (_looks_like_id_name(column) or _is_row_counter(observed))
        ):
            return "excluded", "id-like (unique per row)"
        if pd.api.types.is_float_dtype(values) and unique_per_row and _looks_like_id_name(column):
            return "excluded", "id-like (unique per row)"
        return "numeric", ""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return "categorical", ""
    # Text (object / string): numbers stored as text, dates, ids, free text, or categories.
    if _parses_as_numbers(observed):
        return "coerce", ""
    if _looks_like_dates(observed):
        return "datetime", ""
    decimal_comma = _decimal_comma_example(observed)
    if decimal_comma is not None:
        return "categorical", (
            f"numbers written with a decimal comma (e.g. {decimal_comma!r}) are read as text, "
            "not as numbers: export the file with decimal points to use them as numbers"
        )
    if unique_per_row and (row_count >= UNIQUE_ID_MIN_ROWS or _looks_like_id_name(column)):
        return "excluded", "id-like (unique per row)"
    if (
        row_count >= HIGH_CARDINALITY_MIN_ROWS
        and distinct_count > HIGH_CARDINALITY_SHARE * row_count
    ):
        return "categorical", (
            f"high-cardinality text ({distinct_count} distinct values in {row_count} rows): "
            "target-encoded inside the cross-validation folds"
        )
    return "categorical", ""


def _needs_coercion(values: pd.Series) -> bool:
    return not _is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _is_numeric_dtype(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _parses_as_numbers(observed: pd.Series) -> bool:
    # A sample rules out ordinary text cheaply; the full check then runs on distinct values.
    sample = observed.sample(n=min(len(observed), PARSE_SAMPLE_ROWS), random_state=0)
    if _numeric_share(sample.value_counts()) < NUMERIC_PARSE_SHARE - 0.05:
        return False
    return _numeric_share(observed.value_counts()) >= NUMERIC_PARSE_SHARE


def _decimal_comma_example(observed: pd.Series) -> str | None:
    """A value like ``'1,5'`` when the text column holds numbers with a decimal comma (all but
    a few of its distinct values parse once the comma is a point), else ``None``."""
    text = pd.Series(observed.unique()).astype(str).str.strip()
    text = text[text != ""]
    with_comma = text.str.fullmatch(DECIMAL_COMMA_PATTERN)
    if text.empty or not with_comma.any():
        return None
    pointed = text.where(~with_comma, text.str.replace(",", ".", regex=False))
    if pd.to_numeric(pointed, errors="coerce").notna().mean() < NUMERIC_PARSE_SHARE:
        return None
    return str(text[with_comma].iloc[0])


def _numeric_share(counts: pd.Series) -> float:
    text = pd.Series(counts.index.astype(str), index=counts.index).str.strip()
    filled = (text != "").to_numpy()  # blanks count as missing (Telco's total_charges)
    if not filled.any():
        return 0.0
    parsed = pd.to_numeric(text[filled], errors="coerce").notna().to_numpy()
    weights = counts.to_numpy()[filled]
    return float(weights[parsed].sum() / weights.sum())


def _looks_like_dates(observed: pd.Series) -> bool:
    sample = observed.astype(str).head(DATETIME_SAMPLE_ROWS)
    if sample.str.match(DATE_TEXT_PATTERN).mean() < NUMERIC_PARSE_SHARE:
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed", utc=True)
    return bool(parsed.notna().mean() >= NUMERIC_PARSE_SHARE)


def _looks_like_id_name(column: str) -> bool:
    return bool(ID_NAME_PATTERN.search(column.strip())) or column.strip().lower() in {
        "id",
        "index",
        "row",
        "rowid",
        "row_number",
    }


def _is_row_counter(observed: pd.Series) -> bool:
    ordered = np.sort(observed.to_numpy())
    return len(ordered) > 2 and bool(np.all(np.diff(ordered) == 1))


# --- suite pieces ------------------------------------------------------------------------------


def _null_expectation(values: pd.Series, column: str, meta: dict) -> list[Any]:
    import great_expectations.expectations as gxe

    null_rate = float(values.isna().mean())
    if null_rate > MAX_NULL_RATE_FOR_CHECK:
        return []
    # Allow the null rate to double or to rise by the slack, whichever is more.
    mostly = round(max(0.0, 1.0 - null_rate - max(NULL_RATE_SLACK, null_rate)), 4)
    return [gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly, meta=meta)]


def _range_expectation(values: pd.Series, column: str, meta: dict) -> list[Any]:
    import great_expectations.expectations as gxe

    observed = values.dropna()
    if observed.empty:
        return []
    low, high = float(observed.min()), float(observed.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    margin = RANGE_TOLERANCE * (high - low)
    floor = low - margin if low < 0 else max(0.0, low - margin)
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=_round_bound(floor),
            max_value=_round_bound(high + margin),
            mostly=RANGE_MOSTLY,
            meta=meta,
        )
    ]


def date_text_format(values: pd.Series) -> str | None:
    """The strftime format a date column is written in (datetimes: as a CSV export writes them),
    when all but 1 % of its values follow one; ``None`` otherwise."""
    text = dates_as_text(values, None).dropna()
    if text.empty:
        return None
    candidates: list[str] = []
    with warnings.catch_warnings():  # pandas warns when day-first text is guessed month-first
        warnings.simplefilter("ignore")
        for value in text.head(DATE_FORMAT_GUESSES):
            for dayfirst in (False, True):
                guess = guess_datetime_format(str(value), dayfirst=dayfirst)
                if guess and guess not in candidates:
                    candidates.append(guess)
    shares = {candidate: _format_share(text, candidate) for candidate in candidates}
    best = max(shares, key=shares.__getitem__, default=None)  # ties: the month-first guess
    return best if best is not None and shares[best] >= DATE_FORMAT_MOSTLY else None


def dates_as_text(values: pd.Series, date_format: str | None) -> pd.Series:
    """A date column as text: datetimes written in ``date_format`` (``None``: as pandas writes
    them to CSV), text kept as it is, anything else as its ``str``, nulls kept.

    A batch read from Parquet or a database holds datetimes where the reference CSV held text;
    written in the reference's format, they pass its format check, as dates by type should.
    """
    if isinstance(values.dtype, pd.PeriodDtype):
        values = values.dt.to_timestamp()
    if pd.api.types.is_datetime64_any_dtype(values):
        if date_format is None:
            text = values.astype(str)
        else:
            zoned = values.dt.tz is not None
            if "%z" in date_format and not zoned:
                values = values.dt.tz_localize("UTC")  # loopml reads naive datetimes as UTC
            elif "%z" not in date_format and zoned:
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            text = values.dt.strftime(date_format)
        return text.where(values.notna(), None).astype(object)
    if values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) != "string":
        return values.map(lambda value: _date_text(value, date_format), na_action="ignore")
    return values


def _date_text(value: Any, date_format: str | None) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime | date):
        return dates_as_text(pd.Series(pd.to_datetime([value])), date_format).iloc[0]
    return str(value)


def _format_share(text: pd.Series, date_format: str) -> float:
    """The share of ``text`` that :func:`datetime.datetime.strptime` reads with ``date_format``
    (what GX's strftime check runs), on a sample of a long column."""
    sample = text.sample(n=min(len(text), PARSE_SAMPLE_ROWS), random_state=0)
    return float(np.mean([_matches_format(value, date_format) for value in sample]))


def _matches_format(value: Any, date_format: str) -> bool:
    try:
        datetime.strptime(str(value), date_format)  # noqa: DTZ007 (what GX's check runs)
    except ValueError:
        return False
    return True


def _date_expectations(values: pd.Series, column: str, meta: dict) -> list[Any]:
    """The text format of a date column (when it is text, or read as text from a CSV export)
    and its range, as the model reads the dates (naive UTC: :func:`loopml.features.as_datetime`).
    """
    import great_expectations.expectations as gxe

    from loopml.features import as_datetime

    expectations: list[Any] = []
    date_format = date_text_format(values)
    if date_format is not None:
        expectations.append(
            gxe.ExpectColumnValuesToMatchStrftimeFormat(
                column=column,
                strftime_format=date_format,
                mostly=DATE_FORMAT_MOSTLY,
                meta=meta,
            )
        )
    moments = as_datetime(values).dropna()
    if moments.empty:
        return expectations
    low, high = moments.min(), moments.max()
    margin = max(RANGE_TOLERANCE * (high - low), DATE_RANGE_MIN_MARGIN)
    expectations.append(
        gxe.ExpectColumnValuesToBeBetween(
            column=column,
            min_value=(low - margin).floor("D").isoformat(),
            max_value=(high + margin).ceil("D").isoformat(),
            mostly=RANGE_MOSTLY,
            meta={"loopml": {**meta["loopml"], "reads_as": "dates"}},
        )
    )
    return expectations


def _round_bound(value: float) -> float:
    """Six significant digits: readable in the JSON, and never tighter than intended by much."""
    if value == 0:
        return 0.0
    return float(f"{value:.6g}")


def _distinct(values: pd.Series) -> list[Any]:
    return _sorted_values([_native(value) for value in values.dropna().unique()])


def _sorted_values(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:  # mixed types
        return sorted(values, key=lambda value: (type(value).__name__, str(value)))


def _native(value: Any) -> Any:
    """A JSON- and YAML-friendly Python value (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return _native(value)


def _strip_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip_ids(item) for key, item in value.items() if key != "id"}
    if isinstance(value, list):
        return [_strip_ids(item) for item in value]
    return value


def _closest(name: str, frame: pd.DataFrame) -> str:
    columns = [str(column) for column in frame.columns]
    lowered = {column.lower(): column for column in columns}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    if matches:
        return "; closest: " + ", ".join(repr(lowered[match]) for match in matches)
    shown = ", ".join(repr(column) for column in columns[:8])
    return f"; columns are {shown}{', ...' if len(columns) > 8 else ''}"
