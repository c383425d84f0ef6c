"""Model families and their pipelines: preprocessing per family, the estimators, and the
decision threshold carried inside the artifact.

One sklearn ``Pipeline`` per model: step ``"preprocess"`` (a ColumnTransformer suited to the
family) and step ``"model"`` (the estimator), so hyperparameters are ``model__C`` and the
same object is cross-validated, registered (skops) and served. Boosting stops early on a
validation slice instead of running a fixed number of rounds. Dates become parts and elapsed
days; categorical columns with many levels are target-encoded (scikit-learn's
``TargetEncoder``, cross-fitted inside ``fit``), all inside the one Pipeline.

The transformers here are named in registered artifacts (``loopml.modeling.CategoryText``):
they stay in this module. The search across families is :mod:`loopml.search`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import (
    FixedThresholdClassifier,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    OneHotEncoder,
    OrdinalEncoder,
    SplineTransformer,
    StandardScaler,
    TargetEncoder,
)
from sklearn.utils.validation import check_is_fitted

from loopml.config import ProjectConfig
from loopml.errors import ConfigError
from loopml.features import as_datetime
from loopml.label_rule import label_index

CLASSIFICATION_FAMILIES = ("logistic", "hist_gradient_boosting", "random_forest", "logistic_spline")
REGRESSION_FAMILIES = ("ridge", "hist_gradient_boosting", "random_forest", "ridge_spline")
# Linear models whose numeric inputs also enter as cubic B-splines (curves, not just slopes).
SPLINE_FAMILIES = frozenset({"logistic_spline", "ridge_spline"})
LINEAR_FAMILIES = frozenset({"logistic", "ridge"}) | SPLINE_FAMILIES
# Knots per splined column (scikit-learn's default), at quantiles: cubic splines without the
# bias column give SPLINE_KNOTS + 1 basis columns per column.
SPLINE_KNOTS = 5
MISSING_CATEGORY = "__missing__"
# Trees see at most this many codes per categorical column (HGB needs fewer than max_bins=255).
TREE_MAX_CATEGORIES = 250
# One-hot columns per categorical column; rarer values share one "infrequent" column.
LINEAR_MAX_CATEGORIES = 50
LINEAR_MIN_FREQUENCY = 5

# Categorical columns with more distinct values than this (in the training rows) are
# target-encoded for every family instead of one-hot / ordinal coded.
HIGH_CARDINALITY_LEVELS = LINEAR_MAX_CATEGORIES
# Boosting runs up to this many rounds and stops when the loss on a held-out slice of the
# fold's training rows has not improved for HGB_PATIENCE rounds.
HGB_MAX_ITER = 500
HGB_VALIDATION_FRACTION = 0.1
HGB_PATIENCE = 20
INTEGER_PARAMS = frozenset(
    {
        "n_estimators",
        "max_depth",
        "max_leaf_nodes",
        "min_samples_leaf",
        "min_samples_split",
        "max_iter",
        "max_bins",
        "n_iter_no_change",
    }
)
_INTEGRAL_TEXT = re.compile(r"-?\d+\.0+")


# --------------------------------------------------------------------------- transformers


class _ColumnwiseTransformer(TransformerMixin, BaseEstimator):
    """A transformer that learns nothing from the data: ``fit`` records the input's width and
    column names (scikit-learn's contract), which ``transform`` checks."""

    def fit(self, X: Any, y: Any = None) -> _ColumnwiseTransformer:
        frame = _as_frame(X)
        self.n_features_in_ = frame.shape[1]
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return _feature_names_out(self, input_features)


class CategoryText(_ColumnwiseTransformer):
    """Categorical columns of any dtype as canonical strings, missing values as one category.

    ``True``/``"True"``, ``1``/``1.0``/``"1.0"`` and ``NaN``/``None``/``pd.NA`` each map to the
    same text, so a column read as bool, int, float (an int column with a null), object or
    category gives the same categories at training and scoring time.

    Args:
        missing_text: the category that stands for a missing value.
    """

    def __init__(self, missing_text: str = MISSING_CATEGORY) -> None:
        self.missing_text = missing_text

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        frame = _checked_frame(self, X)
        if frame.shape[1] == 0:
            return np.empty((len(frame), 0), dtype=object)
        columns = [
            category_text(frame.iloc[:, i], self.missing_text) for i in range(frame.shape[1])
        ]
        return np.column_stack(columns)


class NumericValues(_ColumnwiseTransformer):
    """Numeric columns as float64; text that is not a number becomes NaN (e.g. ``" "``)."""

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        frame = _checked_frame(self, X)
        values = np.empty(frame.shape, dtype=np.float64)
        for i in range(frame.shape[1]):
            column = pd.to_numeric(frame.iloc[:, i], errors="coerce")
            values[:, i] = column.astype("float64").to_numpy(na_value=np.nan)
        return values


class DatetimeParts(_ColumnwiseTransformer):
    """Date and time columns as numbers a model can split or weigh.

    Each column gives its year, month, day of month, day of week, hour and the days elapsed
    since 1970-01-01 (a fixed epoch, so nothing is learned from the data and nothing leaks);
    values that are not dates give NaN. Text, datetime64 and tz-aware inputs all work
    (see :func:`loopml.features.as_datetime`).
    """

    PARTS = ("year", "month", "day", "weekday", "hour", "days")

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        frame = _checked_frame(self, X)
        blocks = []
        for i in range(frame.shape[1]):
            moments = as_datetime(pd.Series(frame.iloc[:, i].to_numpy(), index=frame.index))
            parts = moments.dt
            elapsed = (moments - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)
            for values in (
                parts.year,
                parts.month,
                parts.day,
                parts.dayofweek,
                parts.hour,
                elapsed,
            ):
                blocks.append(values.astype("float64").to_numpy(na_value=np.nan))
        if not blocks:
            return np.empty((len(frame), 0), dtype=np.float64)
        return np.column_stack(blocks)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = _feature_names_out(self, input_features)
        return np.asarray([f"{name}_{part}" for name in names for part in self.PARTS], dtype=object)


class NumericSplines(TransformerMixin, BaseEstimator):
    """Each numeric column, plus a cubic B-spline basis of it where it has room for one.

    The basis is scikit-learn's ``SplineTransformer`` with knots at the column's quantiles (so a
    skewed column gets its knots where its rows are) and linear extrapolation beyond them. A
    column whose quantile knots would coincide (a constant, a 0/1 flag, a missing-value
    indicator, a column mostly of one value, a column with missing values left) has no curve to
    fit and passes through alone. The column itself is kept next to its basis, so a regularised
    model can keep a straight line cheaply and spend weight on the curve only where the data
    bend.

    Args:
        n_knots: knots per splined column.
        degree: the splines' polynomial degree.
    """

    def __init__(self, n_knots: int = SPLINE_KNOTS, degree: int = 3) -> None:
        self.n_knots = n_knots
        self.degree = degree

    def fit(self, X: Any, y: Any = None) -> NumericSplines:
        values = self._checked_values(X, reset=True)
        # The knots SplineTransformer would place; a column with NaN left gets none either.
        knots = np.percentile(values, np.linspace(0.0, 100.0, self.n_knots), axis=0)
        self.splined_columns_ = np.flatnonzero(np.all(np.diff(knots, axis=0) > 0, axis=0))
        self.splines_ = None
        if len(self.splined_columns_):
            self.splines_ = SplineTransformer(
                n_knots=self.n_knots,
                degree=self.degree,
                knots="quantile",
                extrapolation="linear",
                include_bias=False,
            ).fit(values[:, self.splined_columns_])
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "splined_columns_")
        values = self._checked_values(X, reset=False)
        if self.splines_ is None:
            return values
        return np.hstack([values, self.splines_.transform(values[:, self.splined_columns_])])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = _feature_names_out(self, input_features)
        if self.splines_ is None:
            return names
        basis = self.splines_.get_feature_names_out(names[self.splined_columns_])
        return np.concatenate([names, np.asarray(basis, dtype=object)])

    def _checked_values(self, X: Any, *, reset: bool) -> np.ndarray:
        if reset:
            self.n_features_in_ = np.shape(X)[1]
            if isinstance(X, pd.DataFrame):
                self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {values.shape}, but NumericSplines is expecting "
                f"{self.n_features_in_} features as input"
            )
        return values


def _as_frame(X: Any) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    array = np.asarray(X, dtype=object)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ValueError(f"expected 2D input, got an array of shape {array.shape}")
    return pd.DataFrame(array)


def _checked_frame(transformer: BaseEstimator, X: Any) -> pd.DataFrame:
    frame = _as_frame(X)
    if frame.shape[1] != transformer.n_features_in_:
        raise ValueError(
            f"X has {frame.shape[1]} features, but {type(transformer).__name__} "
            f"is expecting {transformer.n_features_in_} features as input"
        )
    return frame


def _feature_names_out(transformer: BaseEstimator, input_features: Any) -> np.ndarray:
    check_is_fitted(transformer, "n_features_in_")
    if input_features is not None:
        return np.asarray(input_features, dtype=object)
    if hasattr(transformer, "feature_names_in_"):
        return transformer.feature_names_in_.copy()
    return np.asarray([f"x{i}" for i in range(transformer.n_features_in_)], dtype=object)


def category_text(column: pd.Series, missing_text: str = MISSING_CATEGORY) -> np.ndarray:
    """One column's values as canonical category strings (see :class:`CategoryText`)."""
    mixed = column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) != "string"
    if mixed or isinstance(column.dtype, pd.CategoricalDtype):
        # Hashing would merge True with 1 in an object column; compare their texts instead
        # (a column of text alone hashes safely as it is).
        column = column.astype(str).where(column.notna(), None)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    texts = [_value_text(value) for value in uniques]
    # Distinct raw values may share a text ("1" and 1.0): that is the point.
    lookup = np.asarray([*texts, missing_text], dtype=object)
    return lookup[codes]  # code -1 (missing) picks the last entry


def _value_text(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = str(value).strip()
    if _INTEGRAL_TEXT.fullmatch(text):
        return text.split(".")[0]
    return text


# --------------------------------------------------------------------------- pipelines


def default_families(task: str) -> list[str]:
    """Every family suited to ``task`` (``"classification"`` or ``"regression"``)."""
    if task == "classification":
        return list(CLASSIFICATION_FAMILIES)
    if task == "regression":
        return list(REGRESSION_FAMILIES)
    raise ConfigError(f"unknown task {task!r}; use 'classification' or 'regression'")


def search_families(config: ProjectConfig) -> list[str]:
    """The families the search tries: ``config.search.families`` or every one for the task.

    Raises:
        ConfigError: a listed family does not fit the task (``ridge`` for classification).
    """
    allowed = default_families(config.task)
    if not config.search.families:
        return allowed
    unsuited = [family for family in config.search.families if family not in allowed]
    if unsuited:
        raise ConfigError(
            f"search.families: {unsuited} cannot be used for {config.task}; choose from {allowed}"
        )
    return list(dict.fromkeys(config.search.families))


def build_pipeline(
    family: str,
    params: Mapping[str, Any] | None = None,
    *,
    numeric_columns: list[str],
    categorical_columns: list[str],
    task: str,
    random_state: int | None = None,
    datetime_columns: list[str] | None = None,
    high_cardinality_columns: list[str] | None = None,
) -> Pipeline:
    """An unfitted ``Pipeline([("preprocess", ColumnTransformer), ("model", estimator)])``.

    Linear families: numeric -> median impute (+ missing indicators) -> standard scaling
    (-> :class:`NumericSplines` for the spline families: each column plus its cubic B-spline
    basis); categorical -> canonical text -> one-hot (rare and unseen values share an
    "infrequent" column). Tree families: numeric as float with NaN kept (both trees handle it);
    categorical -> canonical text -> ordinal codes (unseen -> -1, which HGB treats as missing),
    declared categorical to HistGradientBoosting (its native categorical splits). Every family:
    high-cardinality categoricals -> target encoding (``TargetEncoder`` cross-fits its
    training encoding internally, so a column that names each row cannot leak the target);
    datetime columns -> :class:`DatetimeParts` (imputed and scaled for linear families, and
    splined for the spline families).
    Columns not listed are dropped.

    Args:
        family: a name from :func:`default_families`.
        params: estimator parameters (``C``) or pipeline parameters (``model__C``).
        numeric_columns: numeric feature columns.
        categorical_columns: categorical feature columns (high-cardinality ones included).
        task: ``"classification"`` or ``"regression"``.
        random_state: seed for the estimator and the target encoder's folds.
        datetime_columns: date and time feature columns.
        high_cardinality_columns: the categorical columns to target-encode (see
            :func:`high_cardinality_columns`).

    Raises:
        ConfigError: the family does not fit the task, or no columns are given.
    """
    if family not in default_families(task):
        raise ConfigError(f"model family {family!r} cannot be used for {task}")
    dates = list(datetime_columns or [])
    if not numeric_columns and not categorical_columns and not dates:
        raise ConfigError("a pipeline needs at least one numeric, categorical or datetime column")
    linear = family in LINEAR_FAMILIES
    splines = family in SPLINE_FAMILIES
    encoded = [column for column in high_cardinality_columns or [] if column in categorical_columns]
    coded = [column for column in categorical_columns if column not in encoded]
    transformers = []
    if coded:
        encoder = (
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                min_frequency=LINEAR_MIN_FREQUENCY,
                max_categories=LINEAR_MAX_CATEGORIES,
            )
            if linear
            else OrdinalEncoder(
                handle_unknown="use_encoded_value",
                unknown_value=-1,
                encoded_missing_value=-1,
                max_categories=TREE_MAX_CATEGORIES,
            )
        )
        categorical_steps = Pipeline([("text", CategoryText()), ("encode", encoder)])
        transformers.append(("categorical", categorical_steps, coded))
    if encoded:
        target_type = "continuous" if task == "regression" else "auto"
        steps = [
            ("text", CategoryText()),
            ("encode", TargetEncoder(target_type=target_type, random_state=random_state)),
        ]
        if linear:
            steps.append(("scale", StandardScaler()))
        transformers.append(("high_cardinality", Pipeline(steps), encoded))
    if numeric_columns:
        numeric = _numeric_steps(NumericValues(), linear, splines)
        transformers.append(("numeric", numeric, numeric_columns))
    if dates:
        transformers.append(("datetime", _numeric_steps(DatetimeParts(), linear, splines), dates))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    # ColumnTransformer puts the categorical block first: its codes are columns 0..k-1.
    categorical_positions = list(range(len(coded))) or None
    pipeline = Pipeline(
        [
            ("preprocess", preprocess),
            ("model", _estimator(family, task, random_state, categorical_positions)),
        ]
    )
    if params:
        pipeline.set_params(**_pipeline_params(params))
    return pipeline


def _numeric_steps(source: BaseEstimator, linear: bool, splines: bool = False) -> BaseEstimator:
    """Numbers as they come for trees (NaN kept); imputed, flagged and scaled for linear models,
    with a spline basis added for the spline families.

    The missing-value indicators are added only for columns with missing values in the
    training rows, so missingness that carries signal reaches the linear model.
    """
    if not linear:
        return source
    steps = [
        ("numbers", source),
        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
        ("scale", StandardScaler()),
    ]
    if splines:
        steps.append(("splines", NumericSplines()))
    return Pipeline(steps)


def high_cardinality_columns(features: pd.DataFrame, categorical_columns: list[str]) -> list[str]:
    """The categorical columns with more than :data:`HIGH_CARDINALITY_LEVELS` distinct values.

    Decided once on the search's rows and kept in the :class:`SearchResult`, so the refit
    and every fold build the same pipeline.
    """
    return [
        column
        for column in categorical_columns
        if column in features.columns
        and features[column].nunique(dropna=True) > HIGH_CARDINALITY_LEVELS
    ]


def _estimator(
    family: str, task: str, random_state: int | None, categorical_positions: list[int] | None
) -> BaseEstimator:
    classification = task == "classification"
    if family in ("logistic", "logistic_spline"):
        return LogisticRegression(max_iter=1000, random_state=random_state)
    if family in ("ridge", "ridge_spline"):
        return Ridge(random_state=random_state)
    if family == "hist_gradient_boosting":
        model_class = (
            HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        )
        return model_class(
            categorical_features=categorical_positions,
            max_iter=HGB_MAX_ITER,
            early_stopping=True,
            validation_fraction=HGB_VALIDATION_FRACTION,
            n_iter_no_change=HGB_PATIENCE,
            random_state=random_state,
        )
    model_class = RandomForestClassifier if classification else RandomForestRegressor
    # n_jobs=1: parallelism belongs to the caller (trials, Dask), not to each forest.
    return model_class(n_jobs=1, random_state=random_state)


def _pipeline_params(params: Mapping[str, Any]) -> dict[str, Any]:
    converted = {}
    for name, value in params.items():
        key = name if "__" in name else f"model__{name}"
        leaf = key.rsplit("__", 1)[-1]
        if leaf in INTEGER_PARAMS and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON / MLflow round trips turn ints into floats
        converted[key] = value
    return converted


def with_threshold(
    pipeline: Pipeline, threshold: float, positive_label: Any
) -> FixedThresholdClassifier:
    """A fitted binary pipeline with its decision threshold inside.

    ``predict`` then labels a row positive when its positive-class probability is at least
    ``threshold``, so the registered artifact (and ``mlflow.pyfunc``, ``mlflow models serve``)
    predicts what ``loopml score`` writes. The pipeline is used as fitted, not refitted.

    Raises:
        DataError: ``positive_label`` is not one of the pipeline's classes.
    """
    classes = list(pipeline.classes_)
    positive = classes[label_index(classes, positive_label)]
    return FixedThresholdClassifier(
        pipeline,
        threshold=float(threshold),
        # The class itself (np.int64 1, np.str_ "Yes") as a plain Python value for skops.
        pos_label=positive.item() if isinstance(positive, np.generic) else positive,
        response_method="predict_proba",
    )


def inner_pipeline(model: Any) -> Pipeline:
    """The preprocessing + estimator pipeline of a model, without its decision threshold
    (for explanations and anything that reads the pipeline's steps)."""
    if not isinstance(model, FixedThresholdClassifier):
        return model
    # Wrapped as fitted (no ``estimator_``), or refitted by the wrapper's own ``fit``.
    fitted = getattr(model, "estimator_", None)
    return model.estimator if fitted is None else fitted


def skops_trusted_types(pipeline: Any) -> list[str]:
    """The types skops must be told to trust to load ``pipeline`` (for ``mlflow.sklearn``).

    Computed from the pipeline itself, so it stays right when sklearn or the pipeline changes.
    """
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)))
