"""Model families, their pipelines and search spaces, and the Optuna search across them.

One sklearn ``Pipeline`` per model: step ``"preprocess"`` (a ColumnTransformer suited to the
family) and step ``"model"`` (the estimator), so hyperparameters are ``model__C`` and the
same object is cross-validated, registered (skops) and served.

Scores keep their natural sign: the study maximises scores (roc_auc, f1_macro, ...) and
minimises errors (rmse, mae, log_loss); ``SearchResult.direction`` says which.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import (
    FixedThresholdClassifier,
    KFold,
    StratifiedKFold,
    cross_val_predict,
    train_test_split,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from loopml.config import ParamRange, ProjectConfig
from loopml.errors import ConfigError, DataError, LoopmlError
from loopml.evaluation import check_metric, compute_metrics
from loopml.label_rule import label_index
from loopml.metrics import metric_direction

CLASSIFICATION_FAMILIES = ("logistic", "hist_gradient_boosting", "random_forest")
REGRESSION_FAMILIES = ("ridge", "hist_gradient_boosting", "random_forest")
LINEAR_FAMILIES = frozenset({"logistic", "ridge"})
MISSING_CATEGORY = "__missing__"
# Trees see at most this many codes per categorical column (HGB needs fewer than max_bins=255).
TREE_MAX_CATEGORIES = 250
# One-hot columns per categorical column; rarer values share one "infrequent" column.
LINEAR_MAX_CATEGORIES = 50
LINEAR_MIN_FREQUENCY = 5

# Ranges sized for 2 cores and small-to-medium tables; config.search.spaces overrides them.
DEFAULT_SPACES: dict[str, dict[str, ParamRange]] = {
    "logistic": {"C": ParamRange(low=1e-3, high=100.0, log=True)},
    "ridge": {"alpha": ParamRange(low=1e-3, high=1e3, log=True)},
    "hist_gradient_boosting": {
        "learning_rate": ParamRange(low=0.01, high=0.3, log=True),
        "max_iter": ParamRange(low=50, high=300, log=True, integer=True),
        "max_leaf_nodes": ParamRange(low=8, high=64, log=True, integer=True),
        "min_samples_leaf": ParamRange(low=5, high=100, log=True, integer=True),
        "l2_regularization": ParamRange(low=1e-4, high=10.0, log=True),
    },
    "random_forest": {
        "n_estimators": ParamRange(low=50, high=250, integer=True),
        "max_depth": ParamRange(low=4, high=24, integer=True),
        "min_samples_leaf": ParamRange(low=1, high=20, log=True, integer=True),
        "max_features": ParamRange(low=0.2, high=1.0),
    },
}
# The first trial of each family (enqueued): the library defaults, where they fit a range.
DEFAULT_PARAMS: dict[str, dict[str, float]] = {
    "logistic": {"C": 1.0},
    "ridge": {"alpha": 1.0},
    "hist_gradient_boosting": {
        "learning_rate": 0.1,
        "max_iter": 100,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
        "l2_regularization": 1e-3,
    },
    "random_forest": {
        "n_estimators": 100,
        "max_depth": 16,
        "min_samples_leaf": 1,
        "max_features": 0.5,
    },
}
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


class CategoryText(TransformerMixin, BaseEstimator):
    """Categorical columns of any dtype as canonical strings, missing values as one category.

    ``True``/``"True"``, ``1``/``1.0``/``"1.0"`` and ``NaN``/``None``/``pd.NA`` each map to the
    same text, so a column read as bool, int, float (an int column with a null), object or
    category gives the same categories at training and scoring time.

    Args:
        missing_text: the category that stands for a missing value.
    """

    def __init__(self, missing_text: str = MISSING_CATEGORY) -> None:
        self.missing_text = missing_text

    def fit(self, X: Any, y: Any = None) -> CategoryText:
        frame = _as_frame(X)
        self.n_features_in_ = frame.shape[1]
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        frame = _checked_frame(self, X)
        if frame.shape[1] == 0:
            return np.empty((len(frame), 0), dtype=object)
        columns = [
            category_text(frame.iloc[:, i], self.missing_text) for i in range(frame.shape[1])
        ]
        return np.column_stack(columns)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return _feature_names_out(self, input_features)


class NumericValues(TransformerMixin, BaseEstimator):
    """Numeric columns as float64; text that is not a number becomes NaN (e.g. ``" "``)."""

    def fit(self, X: Any, y: Any = None) -> NumericValues:
        frame = _as_frame(X)
        self.n_features_in_ = frame.shape[1]
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        frame = _checked_frame(self, X)
        values = np.empty(frame.shape, dtype=np.float64)
        for i in range(frame.shape[1]):
            column = pd.to_numeric(frame.iloc[:, i], errors="coerce")
            values[:, i] = column.astype("float64").to_numpy(na_value=np.nan)
        return values

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return _feature_names_out(self, input_features)


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
    if column.dtype == object or isinstance(column.dtype, pd.CategoricalDtype):
        # Hashing would merge True with 1 in an object column; compare their texts instead.
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
) -> Pipeline:
    """An unfitted ``Pipeline([("preprocess", ColumnTransformer), ("model", estimator)])``.

    Linear families: numeric -> median impute (+ missing indicators) -> standard scaling;
    categorical -> canonical text -> one-hot (rare and unseen values share an "infrequent"
    column). Tree families: numeric as float with NaN kept (both trees handle it);
    categorical -> canonical text -> ordinal codes (unseen -> -1, which HGB treats as missing),
    declared categorical to HistGradientBoosting. Columns not listed are dropped.

    Args:
        family: a name from :func:`default_families`.
        params: estimator parameters (``C``) or pipeline parameters (``model__C``).
        numeric_columns: numeric feature columns.
        categorical_columns: categorical feature columns.
        task: ``"classification"`` or ``"regression"``.
        random_state: seed for the estimator.

    Raises:
        ConfigError: the family does not fit the task, or no columns are given.
    """
    if family not in default_families(task):
        raise ConfigError(f"model family {family!r} cannot be used for {task}")
    if not numeric_columns and not categorical_columns:
        raise ConfigError("a pipeline needs at least one numeric or categorical column")
    linear = family in LINEAR_FAMILIES
    transformers = []
    if categorical_columns:
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
        transformers.append(("categorical", categorical_steps, list(categorical_columns)))
    if numeric_columns:
        numeric_steps = (
            Pipeline(
                [
                    ("numbers", NumericValues()),
                    ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                    ("scale", StandardScaler()),
                ]
            )
            if linear
            else NumericValues()
        )
        transformers.append(("numeric", numeric_steps, list(numeric_columns)))
    preprocess = ColumnTransformer(transformers, remainder="drop")
    # ColumnTransformer puts the categorical block first: its codes are columns 0..k-1.
    categorical_positions = list(range(len(categorical_columns))) or None
    pipeline = Pipeline(
        [
            ("preprocess", preprocess),
            ("model", _estimator(family, task, random_state, categorical_positions)),
        ]
    )
    if params:
        pipeline.set_params(**_pipeline_params(params))
    return pipeline


def _estimator(
    family: str, task: str, random_state: int | None, categorical_positions: list[int] | None
) -> BaseEstimator:
    classification = task == "classification"
    if family == "logistic":
        return LogisticRegression(max_iter=1000, random_state=random_state)
    if family == "ridge":
        return Ridge(random_state=random_state)
    if family == "hist_gradient_boosting":
        model_class = (
            HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
        )
        return model_class(categorical_features=categorical_positions, random_state=random_state)
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


# --------------------------------------------------------------------------- search space


def search_space(
    family: str, overrides: Mapping[str, ParamRange] | None = None
) -> dict[str, ParamRange]:
    """The family's default ranges, with ``overrides`` replacing or adding parameters."""
    if family not in DEFAULT_SPACES:
        raise ConfigError(f"unknown model family {family!r}")
    space = dict(DEFAULT_SPACES[family])
    for name, value in (overrides or {}).items():
        space[name] = value if isinstance(value, ParamRange) else ParamRange.model_validate(value)
    return space


def suggest_params(
    trial: optuna.Trial, family: str, overrides: Mapping[str, ParamRange] | None = None
) -> dict[str, Any]:
    """Sample the family's estimator parameters in ``trial``.

    Optuna parameter names are ``"<family>__<param>"`` so conditional spaces never collide
    (``min_samples_leaf`` of HGB and of random forests differ); the returned keys are the
    plain estimator parameter names.

    Args:
        trial: the Optuna trial.
        family: the model family.
        overrides: ranges for this family from ``config.search.spaces[family]``.
    """
    params: dict[str, Any] = {}
    for name, value_range in search_space(family, overrides).items():
        key = f"{family}__{name}"
        if value_range.integer:
            params[name] = trial.suggest_int(
                key, math.ceil(value_range.low), math.floor(value_range.high), log=value_range.log
            )
        elif value_range.low == value_range.high:
            params[name] = trial.suggest_float(key, value_range.low, value_range.high)
        else:
            params[name] = trial.suggest_float(
                key, value_range.low, value_range.high, log=value_range.log
            )
    return params


def _default_trial_params(
    family: str, overrides: Mapping[str, ParamRange] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"family": family}
    for name, value_range in search_space(family, overrides).items():
        if name not in DEFAULT_PARAMS.get(family, {}):
            continue  # a parameter only the user's space has: let the sampler choose
        value = min(max(DEFAULT_PARAMS[family][name], value_range.low), value_range.high)
        params[f"{family}__{name}"] = int(round(value)) if value_range.integer else float(value)
    return params


# --------------------------------------------------------------------------- search


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        best_family: the winning model family.
        best_params: its estimator parameters (plain names, no family key).
        best_cv_score: the best trial's mean CV score, in the metric's natural sign.
        metric: the search metric.
        direction: ``"maximize"`` or ``"minimize"``.
        n_trials: finished trials in the study (complete, pruned or failed), resumed ones included.
        n_complete: complete trials.
        n_pruned: pruned trials.
        per_family_best: best complete score of each family tried.
        trials: one row per finished trial: number, family, value, state, duration_seconds, params.
        study_name: the Optuna study.
        rows_searched: rows the cross-validation saw (after ``max_training_rows``).
        elapsed_seconds: wall time of this call.
    """

    best_family: str
    best_params: dict[str, Any]
    best_cv_score: float
    metric: str
    direction: str
    n_trials: int
    n_complete: int
    n_pruned: int
    per_family_best: dict[str, float]
    trials: pd.DataFrame
    study_name: str
    rows_searched: int = 0
    elapsed_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest (for logs, MLflow params and ``--json`` output)."""
        return {
            "best_family": self.best_family,
            "best_params": self.best_params,
            "best_cv_score": self.best_cv_score,
            "metric": self.metric,
            "direction": self.direction,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "per_family_best": self.per_family_best,
            "study_name": self.study_name,
            "rows_searched": self.rows_searched,
            "elapsed_seconds": self.elapsed_seconds,
        }


def run_search(
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    storage: str | None,
    study_name: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    max_threads: int | None = None,
    sampler_seed: int | None = None,
) -> SearchResult:
    """Search families and hyperparameters by cross-validation with Optuna.

    The family is a categorical parameter with conditional spaces. The first trial of each
    family (enqueued) uses default parameters, so every family is scored at least once;
    TPE (seeded) then explores, and a median pruner stops trials whose running mean over the
    folds falls behind. Every trial sees the same folds of at most
    ``config.search.max_training_rows`` rows.

    The study is created or resumed (``load_if_exists``) in ``storage``: an RDB URL such as
    ``sqlite:///path/optuna.db`` or PostgreSQL, or ``None`` for memory. Resuming tops the study
    up to ``n_trials`` finished trials, so a rerun after a crash does only the missing ones;
    several processes can share one study. Use a new ``study_name`` for new data.

    Args:
        features: the training rows (extra columns are ignored).
        target: the target, aligned with ``features``.
        config: the project config (columns, task, search and split settings).
        storage: Optuna storage URL, or ``None``.
        study_name: the study's name in the storage.
        n_trials: total finished trials wanted; defaults to ``config.search.trials``.
        timeout: seconds after which no new trial starts; defaults to
            ``config.search.timeout_seconds``.
        on_trial: called after each trial with ``number``, ``family``, ``value``, ``state``,
            ``elapsed`` (seconds of the trial), ``best_value``, ``best_family``, ``params``.
        max_threads: cap on native (OpenMP/BLAS) threads during the search; ``None`` keeps
            the libraries' default (all cores). Use 1 when trials run in parallel or the
            machine is shared: HGB's OpenMP threads slow down many-fold when oversubscribed.
        sampler_seed: TPE's seed (default: ``config.split.random_state``); give each process
            sharing one study its own.

    Raises:
        ConfigError: unknown metric or families unsuited to the task.
        DataError: the target has missing values or does not fit the task.
        LoopmlError: no trial completed (the message carries the first failure).
    """
    started = time.perf_counter()
    metric = check_metric(config.search_metric, config)
    direction = metric_direction(metric)
    families = search_families(config)
    features, target = _checked_training_data(features, target, config)
    search_features, search_target = _subsample(
        features, target, config.search.max_training_rows, config
    )
    folds = list(_cv_splitter(config).split(search_features, search_target))
    total_trials = config.search.trials if n_trials is None else n_trials
    time_limit = config.search.timeout_seconds if timeout is None else timeout
    seed = config.split.random_state

    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        # Shards sharing a study need their own seeds, or they propose the same trials.
        sampler=optuna.samplers.TPESampler(seed=seed if sampler_seed is None else sampler_seed),
        # Let every family's enqueued default trial finish before anything is pruned.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=len(families)),
    )
    for family in families:
        study.enqueue_trial(
            _default_trial_params(family, config.search.spaces.get(family)), skip_if_exists=True
        )

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", families)
        params = suggest_params(trial, family, config.search.spaces.get(family))
        pipeline = build_pipeline(
            family,
            params,
            numeric_columns=config.columns.numeric,
            categorical_columns=config.columns.categorical,
            task=config.task,
            random_state=seed,
        )
        fold_scores: list[float] = []
        try:
            for step, (train_rows, valid_rows) in enumerate(folds):
                fitted = _fit_quietly(
                    clone(pipeline),
                    search_features.iloc[train_rows],
                    search_target.iloc[train_rows],
                )
                scores = compute_metrics(
                    fitted,
                    search_features.iloc[valid_rows],
                    search_target.iloc[valid_rows],
                    config,
                    [metric],
                )
                fold_scores.append(scores[metric])
                trial.report(float(np.mean(fold_scores)), step)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        return float(np.mean(fold_scores))

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is None:
            return
        best = _best_complete(study)
        on_trial(
            {
                "number": trial.number,
                "family": trial.params.get("family"),
                "value": trial.value,
                "state": trial.state.name,
                "elapsed": trial.duration.total_seconds() if trial.duration else None,
                "params": _plain_params(trial.params),
                "best_value": best.value if best else None,
                "best_family": best.params.get("family") if best else None,
            }
        )

    remaining = max(0, total_trials - _finished_count(study))
    if remaining:
        with threadpool_limits(limits=max_threads):
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=time_limit,
                # A failing trial (odd params, a degenerate fold) must not end the search.
                catch=(Exception,),
                callbacks=[
                    after_trial,
                    # Stops this process when other workers on the same study finished the total.
                    optuna.study.MaxTrialsCallback(
                        total_trials,
                        states=(
                            optuna.trial.TrialState.COMPLETE,
                            optuna.trial.TrialState.PRUNED,
                            optuna.trial.TrialState.FAIL,
                        ),
                    ),
                ],
            )
    return _search_result(study, metric, direction, len(search_features), started)


def _fit_quietly(pipeline: Pipeline, features: pd.DataFrame, target: pd.Series) -> Pipeline:
    with warnings.catch_warnings():
        # A short lbfgs run on a bad C is scored like any other trial; the warning adds noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return pipeline.fit(features, target)


def _finished_count(study: optuna.Study) -> int:
    finished = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.FAIL,
    )
    return len(study.get_trials(deepcopy=False, states=finished))


def _best_complete(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    complete = [trial for trial in complete if trial.value is not None]
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda trial: trial.value)


def _plain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name.split("__", 1)[1]: value for name, value in params.items() if name != "family"}


def _search_result(
    study: optuna.Study, metric: str, direction: str, rows_searched: int, started: float
) -> SearchResult:
    trials = study.get_trials(deepcopy=False)
    best = _best_complete(study)
    if best is None:
        errors = [t.user_attrs.get("error") for t in trials if t.user_attrs.get("error")]
        reason = f": first failure: {errors[0]}" if errors else ""
        raise LoopmlError(
            f"the search finished no trial in study {study.study_name!r} ({len(trials)} started)"
            f"{reason}"
        )
    states = optuna.trial.TrialState
    per_family_best: dict[str, float] = {}
    rows = []
    for trial in trials:
        family = trial.params.get("family")
        if trial.state == states.COMPLETE and trial.value is not None:
            current = per_family_best.get(family)
            better = current is None or (
                trial.value > current if direction == "maximize" else trial.value < current
            )
            if better:
                per_family_best[family] = float(trial.value)
        if trial.state in (states.COMPLETE, states.PRUNED, states.FAIL):
            rows.append(
                {
                    "number": trial.number,
                    "family": family,
                    "value": trial.value,
                    "state": trial.state.name,
                    "duration_seconds": (
                        trial.duration.total_seconds() if trial.duration else np.nan
                    ),
                    "params": _plain_params(trial.params),
                }
            )
    table = pd.DataFrame(
        rows, columns=["number", "family", "value", "state", "duration_seconds", "params"]
    )
    return SearchResult(
        best_family=best.params["family"],
        best_params=_plain_params(best.params),
        best_cv_score=float(best.value),
        metric=metric,
        direction=direction,
        n_trials=len(rows),
        n_complete=int((table["state"] == "COMPLETE").sum()),
        n_pruned=int((table["state"] == "PRUNED").sum()),
        per_family_best=per_family_best,
        trials=table,
        study_name=study.study_name,
        rows_searched=rows_searched,
        elapsed_seconds=time.perf_counter() - started,
    )


def _checked_training_data(
    features: pd.DataFrame, target: pd.Series, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
    if len(features) != len(target):
        raise DataError(f"{len(features)} feature rows but {len(target)} target values")
    absent = [column for column in config.columns.features if column not in features.columns]
    if absent:
        raise DataError(f"the training data is missing feature column(s): {', '.join(absent)}")
    target = pd.Series(np.asarray(target), index=features.index, name=config.target)
    if target.isna().any():
        raise DataError(
            f"the target {config.target!r} has {int(target.isna().sum())} missing value(s); "
            "drop unlabelled rows before training"
        )
    if config.task == "classification":
        n_classes = target.nunique()
        if n_classes < 2:
            raise DataError(f"the target {config.target!r} has a single class")
        if config.is_binary:
            if n_classes > 2:
                raise DataError(
                    f"the target {config.target!r} has {n_classes} classes but the project is "
                    "binary (positive_label is set); set classes instead for multiclass"
                )
            label_index(pd.unique(target), config.positive_label)
    else:
        target = pd.to_numeric(target, errors="raise").astype(np.float64)
    return features[config.columns.features], target


def _subsample(
    features: pd.DataFrame, target: pd.Series, max_rows: int | None, config: ProjectConfig
) -> tuple[pd.DataFrame, pd.Series]:
    if max_rows is None or len(features) <= max_rows:
        return features, target
    stratify = target if config.task == "classification" else None
    if stratify is not None and stratify.value_counts().min() < 2:
        stratify = None  # a class with one row cannot be split proportionally
    kept_features, _, kept_target, _ = train_test_split(
        features,
        target,
        train_size=max_rows,
        stratify=stratify,
        random_state=config.split.random_state,
    )
    return kept_features, kept_target


def _cv_splitter(config: ProjectConfig) -> KFold | StratifiedKFold:
    folds = config.split.cv_folds
    seed = config.split.random_state
    if config.task == "classification":
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def best_pipeline(result: SearchResult, config: ProjectConfig) -> Pipeline:
    """The winning family and parameters as an unfitted pipeline."""
    return build_pipeline(
        result.best_family,
        result.best_params,
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task=config.task,
        random_state=config.split.random_state,
    )


def fit_best(
    features: pd.DataFrame,
    target: pd.Series,
    result: SearchResult,
    config: ProjectConfig,
    *,
    max_threads: int | None = None,
) -> Pipeline:
    """Fit the search's best pipeline on every training row (no subsampling).

    ``max_threads`` caps native threads as in :func:`run_search`.
    """
    features, target = _checked_training_data(features, target, config)
    with threadpool_limits(limits=max_threads):
        return _fit_quietly(best_pipeline(result, config), features, target)


def out_of_fold_scores(
    model: Pipeline | SearchResult,
    features: pd.DataFrame,
    target: pd.Series,
    config: ProjectConfig,
    *,
    max_threads: int | None = None,
) -> np.ndarray:
    """Out-of-fold positive-class probabilities on every given row (binary only).

    Each row is scored by a copy of the pipeline fitted on the other folds, with the
    search's splitter, so a threshold chosen on them is not fitted to the rows it judges.

    Args:
        model: an unfitted (or fitted: it is cloned) pipeline, or a :class:`SearchResult`.
        features: training rows.
        target: their labels.
        config: the project config.
        max_threads: cap on native threads, as in :func:`run_search`.

    Returns:
        Probabilities aligned with ``target``.

    Raises:
        ConfigError: the project is not binary classification.
    """
    if not config.is_binary:
        raise ConfigError("out-of-fold positive-class scores need a binary classification project")
    pipeline = best_pipeline(model, config) if isinstance(model, SearchResult) else clone(model)
    features, target = _checked_training_data(features, target, config)
    with warnings.catch_warnings(), threadpool_limits(limits=max_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        probabilities = cross_val_predict(
            pipeline, features, target, cv=_cv_splitter(config), method="predict_proba"
        )
    # cross_val_predict orders columns like sklearn's classes_: the sorted unique labels.
    positive_index = label_index(np.unique(target), config.positive_label)
    return probabilities[:, positive_index]
