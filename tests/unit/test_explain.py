"""Per-row explanations: in the table's column names, and additive where the method says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import FixedThresholdClassifier

from loopml import modeling
from loopml.config import ColumnsConfig, ProjectConfig
from loopml.errors import DataError
from loopml.explain import explain_rows, explanation_frame
from loopml.features import prepare_features, prepare_target
from tests.conftest import SAMPLE

NUMERIC = ["female", "senior_citizen", "tenure", "monthly_charges", "total_charges"]
CATEGORICAL = ["contract", "internet_service", "payment_method", "online_security"]


@pytest.fixture(scope="module")
def telco() -> tuple[pd.DataFrame, ProjectConfig]:
    frame = pd.read_csv(SAMPLE).sample(800, random_state=5).reset_index(drop=True)
    config = ProjectConfig(
        name="churn",
        data="x.csv",
        target="churn",
        task="classification",
        positive_label="Yes",
        columns=ColumnsConfig(numeric=NUMERIC, categorical=CATEGORICAL),
    )
    return frame, config


def fitted(family: str, frame: pd.DataFrame, config: ProjectConfig, **params):
    pipeline = modeling.build_pipeline(
        family,
        params,
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        task="classification",
        random_state=0,
    )
    return pipeline.fit(prepare_features(frame, config), prepare_target(frame, config))


@pytest.mark.parametrize(
    ("family", "params", "method", "output"),
    [
        ("logistic", {}, "linear", "log-odds"),
        ("logistic_spline", {}, "linear", "log-odds"),  # a column's basis sums back into it
        ("random_forest", {"n_estimators": 20, "max_depth": 6}, "tree", "probability"),
        ("hist_gradient_boosting", {"max_iter": 15}, "permutation", "probability"),
    ],
)
def test_contributions_plus_base_value_add_up_to_the_model_output(
    telco, family, params, method, output
) -> None:
    frame, config = telco
    model = fitted(family, frame, config, **params)
    rows = frame.iloc[:25]

    explanation = explain_rows(model, rows, config, background=frame)

    assert explanation.method == method
    assert list(explanation.contributions.columns) == config.columns.features  # not one-hot names
    features = prepare_features(rows, config)
    yes = list(model.classes_).index("Yes")
    expected = (
        model.decision_function(features) * (1 if yes == 1 else -1)
        if output == "log-odds"
        else model.predict_proba(features)[:, yes]
    )
    assert explanation.output_name.startswith(output)
    total = explanation.contributions.sum(axis=1).to_numpy() + explanation.base_value
    np.testing.assert_allclose(total, expected, atol=1e-6)


def test_a_thresholded_or_opaque_model_is_explained_in_the_same_column_names(telco) -> None:
    frame, config = telco
    pipeline = fitted("logistic", frame, config)
    wrapped = FixedThresholdClassifier(pipeline, threshold=0.3).fit(
        prepare_features(frame, config), prepare_target(frame, config)
    )
    rows = frame.iloc[:10]

    inner = explain_rows(wrapped, rows, config, background=frame)
    table = explanation_frame(inner, rows, pd.Series(range(10)))

    assert inner.method == "linear"
    assert set(table["reason_1"]) <= set(config.columns.features)
    assert {*config.columns.features} <= set(table.columns)
    assert not any("_Month-to-month" in column for column in table.columns)


def test_explaining_rows_without_the_feature_columns_is_one_clear_sentence(telco) -> None:
    frame, config = telco
    model = fitted("logistic", frame, config)
    with pytest.raises(DataError, match="missing feature column\\(s\\): tenure, contract"):
        explain_rows(model, frame.drop(columns=["contract", "tenure"]), config)


def test_a_multiclass_row_is_explained_for_the_class_it_is_predicted_to_be(telco) -> None:
    frame, _ = telco
    config = ProjectConfig(
        name="plan",
        data="x.csv",
        target="contract",
        task="classification",
        classes=["Month-to-month", "One year", "Two year"],
        columns=ColumnsConfig(
            numeric=["tenure", "monthly_charges"], categorical=["internet_service"]
        ),
    )
    model = modeling.build_pipeline(
        "logistic",
        numeric_columns=["tenure", "monthly_charges"],
        categorical_columns=["internet_service"],
        task="classification",
    ).fit(prepare_features(frame, config), prepare_target(frame, config))
    rows = frame.iloc[:15]

    explanation = explain_rows(model, rows, config, background=frame)

    expected = model.predict_proba(prepare_features(rows, config)).max(axis=1)
    total = explanation.contributions.sum(axis=1).to_numpy() + explanation.base_value
    np.testing.assert_allclose(total, expected, atol=1e-6)
    assert explanation.output_name == "probability of the predicted class"


def test_partial_dependence_is_drawn_when_a_date_column_is_the_most_important(telco):
    """scikit-learn cannot grid datetimes: a date column among the top features made the
    whole figure fail (the model card had none); it is left out of the plotted columns."""
    from loopml.explain import partial_dependence_columns, partial_dependence_figure

    frame, config = telco
    days = pd.to_timedelta(frame["tenure"] * 30, unit="D")
    frame = frame.assign(signed_up=(pd.Timestamp("2026-01-01") - days).dt.strftime("%Y-%m-%d"))
    config = config.model_copy(
        update={"columns": config.columns.model_copy(update={"datetime": ["signed_up"]})}
    )
    model = modeling.build_pipeline(
        "hist_gradient_boosting",
        numeric_columns=NUMERIC,
        categorical_columns=CATEGORICAL,
        datetime_columns=["signed_up"],
        task="classification",
        random_state=0,
    ).fit(prepare_features(frame, config), prepare_target(frame, config))
    importances = {"signed_up": 0.3, "monthly_charges": 0.2, "contract": 0.1, "tenure": 0.05}

    columns = partial_dependence_columns(importances, config, 3)
    figure = partial_dependence_figure(model, prepare_features(frame, config), columns, config)

    assert columns == ["monthly_charges", "contract", "tenure"]
    assert len(figure.axes) >= 3
