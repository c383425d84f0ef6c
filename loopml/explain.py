"""Per-prediction explanations (SHAP values) in the table's own column names.

The registered model is a scikit-learn ``Pipeline(preprocess=ColumnTransformer, model=...)``,
possibly wrapped in a ``FixedThresholdClassifier`` (the threshold travels with the artifact).
The preprocessing is applied once and the final estimator explained on its own inputs:

- random forests: shap's ``TreeExplainer`` (exact, probability of the explained class);
- logistic / ridge: shap's ``LinearExplainer`` (exact; log-odds for logistic regression);
- anything else (HistGradientBoosting with categorical splits, which TreeExplainer reads wrongly):
  shap's permutation explainer on the transformed rows with a small background sample.

Contributions of one-hot and indicator columns are summed back to the column they came from, so
a row's contributions plus its base value equal the explained output (the additivity is checked,
and a method that fails the check gives way to the permutation explainer). A model that is not
such a pipeline (a stacked ensemble, say) is explained by permutation on the raw columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from loopml.config import ProjectConfig
from loopml.errors import DataError
from loopml.features import carried_name, missing_columns, prepare_features
from loopml.modeling import inner_pipeline

BACKGROUND_ROWS = 25
PERMUTATIONS = 2  # random feature orders, each also walked backwards
CHUNK_EVALUATIONS = 20_000  # model inputs per call
ADDITIVITY_TOLERANCE = 1e-6
TOP_REASONS = 3


@dataclass
class Explanation:
    """SHAP values of some rows, one column per original feature column.

    Attributes:
        contributions: rows x feature columns (the table's names), in the output's units.
        base_value: per row, the expected output over the background.
        output: per row, the explained model output (base + contributions, up to rounding).
        output_name: what ``output`` is (``probability of 'Yes'``, ``log-odds of 'Yes'``, ...).
        method: ``tree``, ``linear``, ``permutation`` or ``permutation-raw``.
    """

    contributions: pd.DataFrame
    base_value: np.ndarray
    output: np.ndarray
    output_name: str
    method: str

    def top_reasons(
        self, features: pd.DataFrame, top: int = TOP_REASONS, *, with_values: bool = True
    ) -> pd.DataFrame:
        """Per row, the ``top`` columns with the largest absolute contribution, strongest first:
        ``reason_K`` (the column), ``reason_K_value`` (the row's value of it; left out when
        ``with_values`` is false) and ``reason_K_contribution``. ``top`` beyond the number of
        feature columns gives one reason per column."""
        values = self.contributions.to_numpy()
        order = np.argsort(-np.abs(values), axis=1)[:, :top]
        names = np.asarray(self.contributions.columns, dtype=object)
        raw = (
            features[list(self.contributions.columns)].to_numpy(dtype=object)
            if with_values
            else None
        )
        table: dict[str, Any] = {}
        rows = np.arange(len(values))
        for rank in range(min(top, values.shape[1])):
            picked = order[:, rank]
            table[f"reason_{rank + 1}"] = names[picked]
            if raw is not None:
                table[f"reason_{rank + 1}_value"] = raw[rows, picked]
            table[f"reason_{rank + 1}_contribution"] = values[rows, picked]
        return pd.DataFrame(table)


def explained_class(model: Any, config: ProjectConfig) -> int | None:
    """Index in ``classes_`` of the class explained: the positive class of a binary model;
    ``None`` for regression and multiclass (the predicted class of each row)."""
    if config.task == "regression" or not config.is_binary:
        return None
    classes = [str(value) for value in model.classes_]
    return classes.index(str(config.positive_label))


def explain_rows(
    model: Any,
    frame: pd.DataFrame,
    config: ProjectConfig,
    *,
    background: pd.DataFrame | None = None,
    background_rows: int = BACKGROUND_ROWS,
    random_state: int = 0,
) -> Explanation:
    """SHAP values of ``frame``'s rows for ``model``, in the config's feature column names.

    Args:
        model: the fitted (registered) model.
        frame: rows to explain, with at least the feature columns.
        config: the project's config.
        background: rows standing for "typical" input (the training data); default ``frame``.
        background_rows: background rows sampled (the cost of permutation grows with them).
        random_state: seed of the background sample and the permutations.

    Raises:
        DataError: feature columns are missing, or there is nothing to explain.
    """
    absent = missing_columns(frame, config.columns.features)
    if absent:
        raise DataError(f"the data to explain is missing feature column(s): {', '.join(absent)}")
    if frame.empty:
        raise DataError("the data to explain has no rows")
    features = prepare_features(frame, config).reset_index(drop=True)
    reference = prepare_features(
        background_sample(
            background if background is not None else frame, background_rows, random_state
        ),
        config,
    )
    pipeline = inner_pipeline(model)
    target_class = explained_class(pipeline, config)
    if _is_preprocessed_pipeline(pipeline):
        for method in _methods(pipeline[-1]):
            explanation = _explain_transformed(
                pipeline, features, reference, config, target_class, method, random_state
            )
            if explanation is not None:
                return explanation
    return _explain_raw(pipeline, features, reference, config, target_class, random_state)


def background_sample(
    background: pd.DataFrame, rows: int = BACKGROUND_ROWS, random_state: int = 0
) -> pd.DataFrame:
    """The background rows :func:`explain_rows` uses out of ``background`` (all when few).

    Drawing them once up front (``loopml score --reasons`` explains a batch chunk by chunk)
    gives every chunk the same background as one call on the whole batch would.
    """
    if len(background) > rows:
        return background.sample(rows, random_state=random_state)
    return background


def _is_preprocessed_pipeline(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    return (
        isinstance(model, Pipeline)
        and len(model.steps) == 2
        and isinstance(model.steps[0][1], ColumnTransformer)
    )


def _methods(estimator: Any) -> list[str]:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    if isinstance(estimator, RandomForestClassifier | RandomForestRegressor):
        return ["tree", "permutation"]
    if isinstance(estimator, LogisticRegression | Ridge | LinearRegression):
        return ["linear", "permutation"]
    return ["permutation"]


def _explained_output(
    estimator: Any, config: ProjectConfig, target_class: int | None, method: str
) -> tuple[Any, str]:
    """The function of the estimator's input that is explained, and its name."""
    if config.task == "regression":
        return estimator.predict, f"predicted {config.target}"
    if target_class is not None:
        label = estimator.classes_[target_class]
        if method == "linear":
            sign = 1.0 if target_class == 1 else -1.0
            return (
                lambda rows: sign * estimator.decision_function(rows),
                f"log-odds of {label!r}",
            )
        return lambda rows: estimator.predict_proba(rows)[
            :, target_class
        ], f"probability of {label!r}"
    # Every class's probability: each row is explained for the class it is predicted to be.
    return estimator.predict_proba, "probability of the predicted class"


def _explain_transformed(
    pipeline: Any,
    features: pd.DataFrame,
    reference: pd.DataFrame,
    config: ProjectConfig,
    target_class: int | None,
    method: str,
    random_state: int,
) -> Explanation | None:
    import shap

    preprocess, estimator = pipeline[0], pipeline[-1]
    rows = _dense(preprocess.transform(features))
    background = _dense(preprocess.transform(reference))
    function, output_name = _explained_output(estimator, config, target_class, method)
    output = _as_output(function(rows))
    if method == "tree":
        result = shap.TreeExplainer(estimator)(rows)
        values, base = _class_slice(
            result.values, result.base_values, target_class, estimator, rows
        )
    elif method == "linear":
        result = shap.LinearExplainer(estimator, shap.maskers.Independent(background))(rows)
        values, base = np.asarray(result.values), np.asarray(result.base_values)
        if values.ndim == 3:
            values, base = values[:, :, 0], base[:, 0]
        if target_class == 0:  # shap explains classes_[1] of a binary logistic regression
            values, base = -values, -base
    else:
        values, base = _permutation(function, rows, background, random_state)
    base = np.broadcast_to(np.asarray(base, dtype=float), (len(rows),)).copy()
    if not np.allclose(values.sum(axis=1) + base, output, atol=ADDITIVITY_TOLERANCE):
        return None
    grouped = group_by_source(values, preprocess, list(features.columns))
    return Explanation(grouped, base, output, output_name, method)


def _class_slice(
    values: Any, base: Any, target_class: int | None, estimator: Any, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    values, base = np.asarray(values), np.asarray(base)
    if values.ndim < 3:
        return values, base
    if target_class is None:
        picked = estimator.predict_proba(rows).argmax(axis=1)
        index = np.arange(len(rows))
        return values[index, :, picked], base[index, picked]
    return values[:, :, target_class], base[:, target_class]


def _permutation(
    function: Any, rows: np.ndarray, background: np.ndarray, random_state: int
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation Shapley values (Štrumbelj & Kononenko; shap's ``PermutationExplainer``).

    Along each feature order (and its reverse, which halves the variance), the row's values
    replace the background's one column at a time; each column gets the change in the mean
    output it causes. The contributions of a row add up to ``f(row) - mean f(background)``
    exactly, whatever the orders. Written in NumPy rather than called from shap because shap's
    version compiles numba kernels in every new process (20-60 s measured on this machine),
    longer than explaining a batch; here all rows of a chunk move in one model call.
    """
    generator = np.random.default_rng(random_state)
    columns = rows.shape[1]
    orders = []
    for _ in range(PERMUTATIONS):
        order = generator.permutation(columns)
        orders += [order, order[::-1]]

    def outputs(matrix: np.ndarray) -> np.ndarray:  # (rows, classes), one class when 1-D
        values = np.asarray(function(matrix), dtype=float)
        return values.reshape(len(matrix), -1)

    base = outputs(background).mean(axis=0)
    values = np.zeros((*rows.shape, base.size), dtype=float)
    chunk = max(1, CHUNK_EVALUATIONS // max(len(background), 1))
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        for order in orders:
            mixed = np.repeat(background[None, :, :], len(part), axis=0)
            previous = np.broadcast_to(base, (len(part), base.size))
            for column in order:
                mixed[:, :, column] = part[:, None, column]
                output = outputs(mixed.reshape(-1, columns))
                current = output.reshape(len(part), len(background), -1).mean(axis=1)
                values[start : start + chunk, column, :] += current - previous
                previous = current
    picked = outputs(rows).argmax(axis=1)  # the predicted class (the only one when 1-D)
    index = np.arange(len(rows))
    return values[index, :, picked] / len(orders), base[picked]


def _as_output(values: Any) -> np.ndarray:
    """One number per row: class probabilities reduce to the predicted class's."""
    values = np.asarray(values, dtype=float)
    return values.max(axis=1) if values.ndim == 2 else values


def _dense(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=float)


def source_columns(preprocess: Any, columns: list[str]) -> list[str]:
    """For each output column of a fitted ``ColumnTransformer``, the input column it came from.

    Each transformer's block of outputs (``output_indices_``) maps to that transformer's input
    columns; within a block, an output name is matched to the longest input column name it
    contains (``contract_Month-to-month`` -> ``contract``, ``missingindicator_tenure`` ->
    ``tenure``). A block with one input column maps wholly to it.

    Raises:
        DataError: an output column cannot be traced to one input column.
    """
    sources: list[str | None] = [None] * sum(
        block.stop - block.start for block in preprocess.output_indices_.values()
    )
    for name, _, selected in preprocess.transformers_:
        block = preprocess.output_indices_.get(name)
        if block is None or block.stop == block.start:
            continue
        inputs = [columns[i] for i in selected] if _positions(selected) else list(selected)
        outputs = [
            str(text).split("__", 1)[-1]
            for text in preprocess.get_feature_names_out()[block.start : block.stop]
        ]
        for offset, output in enumerate(outputs):
            if len(inputs) == 1:
                sources[block.start + offset] = inputs[0]
                continue
            matches = [column for column in inputs if column in output]
            if not matches:
                raise DataError(f"cannot trace model input {output!r} to a column of the table")
            sources[block.start + offset] = max(matches, key=len)
    return [str(source) for source in sources]


def _positions(selected: Any) -> bool:
    values = list(selected) if not isinstance(selected, str) else [selected]
    return bool(values) and all(isinstance(value, int | np.integer) for value in values)


def group_by_source(values: np.ndarray, preprocess: Any, columns: list[str]) -> pd.DataFrame:
    """Sum SHAP values of transformed columns into the table's columns (one per feature)."""
    sources = source_columns(preprocess, columns)
    frame = pd.DataFrame(values, columns=sources)
    grouped = frame.T.groupby(level=0, sort=False).sum().T
    for column in columns:
        if column not in grouped.columns:
            grouped[column] = 0.0  # dropped by the preprocessing: no part in the prediction
    return grouped[columns].reset_index(drop=True)


def _explain_raw(
    model: Any,
    features: pd.DataFrame,
    reference: pd.DataFrame,
    config: ProjectConfig,
    target_class: int | None,
    random_state: int,
) -> Explanation:
    """Permutation SHAP on the raw columns, for a model whose inside cannot be opened.

    shap's maskers need numbers: categorical columns travel as codes into a table of their
    values and are decoded before the model sees them.
    """
    columns = list(features.columns)
    categorical = [column for column in config.columns.categorical if column in columns]
    books = {
        column: pd.Index(pd.concat([features[column], reference[column]]).dropna().unique())
        for column in categorical
    }

    def encode(frame: pd.DataFrame) -> np.ndarray:
        coded = frame.copy()
        for column in categorical:
            codes = books[column].get_indexer(frame[column]).astype(float)
            coded[column] = np.where(codes < 0, np.nan, codes)
        return coded.to_numpy(dtype=float)

    def decode(matrix: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(matrix, columns=columns)
        for column in categorical:
            codes = frame[column].to_numpy()
            known = np.asarray(books[column], dtype=object)
            safe = np.where(np.isnan(codes), 0, codes).astype(int)
            frame[column] = pd.Series(np.where(np.isnan(codes), None, known[safe]), dtype=object)
        return frame

    function, output_name = _explained_output(model, config, target_class, "raw")
    rows = encode(features)
    values, base = _permutation(
        lambda m: function(decode(m)), rows, encode(reference), random_state
    )
    output = _as_output(function(features))
    base = np.broadcast_to(base, (len(rows),)).copy()
    contributions = pd.DataFrame(values, columns=columns)
    return Explanation(contributions, base, output, output_name, "permutation-raw")


def explanation_frame(
    explanation: Explanation, frame: pd.DataFrame, row_ids: pd.Series, top: int = TOP_REASONS
) -> pd.DataFrame:
    """The file ``loopml explain`` writes: one row per input row.

    Columns: ``row_id``, ``output`` (the explained value), ``base_value``, the top reasons
    (``reason_K``, ``reason_K_value``, ``reason_K_contribution``), then every feature column
    holding its contribution, under its own name or, when one of the columns before uses the
    name, as ``feature:NAME`` (:func:`loopml.features.carried_name`).
    """
    head = pd.DataFrame(
        {
            "row_id": row_ids.reset_index(drop=True),
            "output": explanation.output,
            "base_value": explanation.base_value,
        }
    )
    reasons = explanation.top_reasons(frame.reset_index(drop=True), top)
    taken = {*head.columns, *reasons.columns}
    contributions = explanation.contributions.rename(
        columns=lambda column: carried_name(column, taken)
    )
    return pd.concat([head, reasons, contributions], axis=1)


def global_importance(explanation: Explanation) -> dict[str, float]:
    """Mean absolute contribution per column, largest first."""
    means = explanation.contributions.abs().mean().sort_values(ascending=False)
    return {str(column): float(value) for column, value in means.items()}


def partial_dependence_columns(
    importances: Mapping[str, float], config: ProjectConfig, top: int
) -> list[str]:
    """The ``top`` most important numeric or categorical columns, most important first. Date
    columns are left out: scikit-learn's partial dependence cannot grid datetimes (it failed
    the whole figure)."""
    plottable = {*config.columns.numeric, *config.columns.categorical}
    return [column for column in importances if column in plottable][:top]


def partial_dependence_figure(
    model: Any,
    features: pd.DataFrame,
    columns: list[str],
    config: ProjectConfig,
    *,
    max_rows: int = 500,
    random_state: int = 0,
) -> Any:
    """Partial dependence of the model's output on each of ``columns`` (scikit-learn's display).

    Classification plots the probability of ``classes_[1]`` (binary) or of the first class.
    """
    from matplotlib.figure import Figure
    from sklearn.inspection import PartialDependenceDisplay

    sample = (
        features
        if len(features) <= max_rows
        else features.sample(max_rows, random_state=random_state)
    )
    figure = Figure(figsize=(4.2 * max(len(columns), 1), 3.4))
    axes = [figure.add_subplot(1, len(columns), index + 1) for index in range(len(columns))]
    options: dict[str, Any] = {}
    if config.task == "classification" and not config.is_binary:
        options["target"] = model.classes_[0]
    # The probability, not the thresholded label: sklearn checks the wrapper for fitted
    # attributes the threshold wrapper does not have when it wraps a fitted pipeline.
    PartialDependenceDisplay.from_estimator(
        inner_pipeline(model),
        sample,
        columns,
        categorical_features=[c for c in columns if c in config.columns.categorical] or None,
        grid_resolution=20,
        ax=axes,
        **options,
    )
    for axis in axes:
        for label in axis.get_xticklabels():
            label.set_rotation(30)
            label.set_fontsize(7)
    figure.set_layout_engine("tight")  # laid out when drawn (maybe by the figure worker)
    return figure
