"""Profiling: task inference, positive labels, column roles, clear errors, coercion, suite hash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml.errors import DataError
from loopml.profiling import coerce_numeric, infer_profile, suite_hash

ROWS = 200


def _features(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    generator = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": generator.integers(18, 90, rows),
            "income": generator.normal(50_000, 12_000, rows),
            "plan": generator.choice(["basic", "plus", "pro"], rows),
        }
    )


def _with_target(values, rows: int = ROWS) -> pd.DataFrame:
    frame = _features(rows)
    frame["target"] = values
    return frame


generator = np.random.default_rng(1)


@pytest.mark.parametrize(
    ("target_values", "task", "positive_label", "classes"),
    [
        pytest.param(
            generator.choice(["Yes", "No"], ROWS), "classification", "Yes", None, id="yes-no"
        ),
        pytest.param(generator.integers(0, 2, ROWS), "classification", 1, None, id="0-1-ints"),
        pytest.param(generator.random(ROWS) < 0.5, "classification", True, None, id="bool"),
        pytest.param(
            generator.choice(["setosa", "virginica", "versicolor"], ROWS),
            "classification",
            None,
            ["setosa", "versicolor", "virginica"],
            id="multiclass-strings",
        ),
        pytest.param(
            generator.integers(0, 5, ROWS), "classification", None, [0, 1, 2, 3, 4], id="few-ints"
        ),
        pytest.param(
            generator.normal(10, 3, ROWS), "regression", None, None, id="float-regression"
        ),
        pytest.param(
            generator.integers(0, 500, ROWS), "regression", None, None, id="int-regression"
        ),
    ],
)
def test_task_inference(target_values, task, positive_label, classes):
    profile = infer_profile(_with_target(target_values), "target")

    assert profile.task == task
    assert profile.positive_label == positive_label
    assert type(profile.positive_label) is type(positive_label)
    assert profile.classes == classes
    assert "target" not in profile.features
    assert sorted(profile.features) == ["age", "income", "plan"]


def test_positive_label_is_the_minority_class_when_names_do_not_tell():
    values = np.array(["dog"] * 150 + ["cat"] * 50)

    assert infer_profile(_with_target(values), "target").positive_label == "cat"


@pytest.mark.parametrize(("given", "expected"), [("1", 1), (0, 0), ("yes", "yes")])
def test_given_positive_label_is_matched_by_its_text(given, expected):
    values = np.array([0, 1] * 100) if expected in (0, 1) else np.array(["yes", "no"] * 100)

    profile = infer_profile(_with_target(values), "target", positive_label=given)

    assert profile.positive_label == expected
    assert type(profile.positive_label) is type(expected)


def test_forced_task_overrides_inference():
    values = np.array([0, 1, 2, 3] * 50)

    assert infer_profile(_with_target(values), "target", task="regression").task == "regression"


def test_excluded_columns_carry_reasons():
    frame = _with_target(np.array(["Yes", "No"] * 100))
    frame["customer_id"] = [f"C-{index:05d}" for index in range(ROWS)]
    frame["row_number"] = np.arange(ROWS)
    frame["country"] = "NL"
    frame["empty"] = np.nan
    frame["signed_up"] = pd.date_range("2024-01-01", periods=ROWS, freq="D")
    frame["signed_up_text"] = frame["signed_up"].dt.strftime("%Y-%m-%d")
    frame["comment"] = [f"free text number {index % 150}" for index in range(ROWS)]
    frame["account"] = [f"A{index}" for index in range(ROWS)]
    frame["event_time"] = frame["signed_up"]

    profile = infer_profile(frame, "target", id_column="account", time_column="event_time")

    assert profile.excluded == {
        "customer_id": "id-like (unique per row)",
        "row_number": "id-like (unique per row)",
        "country": "constant (only 'NL')",
        "empty": "all null",
        "account": "the id column",
        "event_time": "the time column",
    }
    assert "excluded 'customer_id': id-like (unique per row)" in profile.notes
    assert profile.numeric == ["age", "income"]
    # Dates become features (their parts); high-cardinality text is target-encoded, not dropped.
    assert profile.datetime == ["signed_up", "signed_up_text"]
    assert profile.categorical == ["plan", "comment"]
    assert any("'comment': high-cardinality text" in note for note in profile.notes)


def test_low_cardinality_integers_stay_numeric_and_bools_are_categorical():
    frame = _with_target(np.array(["Yes", "No"] * 100))
    frame["has_phone"] = np.array([0, 1] * 100)
    frame["is_senior"] = np.array([True, False, False, False] * 50)

    profile = infer_profile(frame, "target")

    assert "has_phone" in profile.numeric
    assert "is_senior" in profile.categorical


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        pytest.param(
            lambda frame: frame.rename(columns={"target": "Churn_flag"}),
            {},
            "the target 'target' is not a column of the table",
            id="missing-target",
        ),
        pytest.param(
            lambda frame: frame.assign(target=np.nan),
            {},
            "the target 'target' has no values (every row is null)",
            id="all-null-target",
        ),
        pytest.param(
            lambda frame: frame.assign(target="Yes"),
            {},
            "the target 'target' has a single class ('Yes'); classification needs at least two",
            id="one-class",
        ),
        pytest.param(
            lambda frame: frame[["target"]].assign(constant=1, key=range(ROWS)),
            {"id_column": "key"},
            "no usable feature columns besides the target 'target' "
            "(excluded: constant: constant (only 1); key: the id column)",
            id="no-features",
        ),
        pytest.param(
            lambda frame: frame,
            {"positive_label": "Maybe"},
            "the positive label 'Maybe' is not a value of the target 'target' "
            "(values: 'No', 'Yes')",
            id="unknown-positive-label",
        ),
        pytest.param(
            lambda frame: frame,
            {"task": "regression"},
            "the target 'target' is not numeric (dtype object), so it cannot be used for "
            "regression; use --task classification",
            id="regression-on-text",
        ),
        pytest.param(
            lambda frame: frame,
            {"id_column": "customerID"},
            "the id column 'customerID' is not a column of the table",
            id="missing-id-column",
        ),
    ],
)
def test_unusable_input_raises_one_clear_sentence(change, options, message):
    frame = change(_with_target(np.array(["Yes", "No"] * 100)))

    with pytest.raises(DataError) as raised:
        infer_profile(frame, "target", **options)

    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_missing_target_message_names_the_closest_columns(telco_frame):
    with pytest.raises(DataError, match=r"the target 'Churn' is not a column.*closest: 'churn'"):
        infer_profile(telco_frame, "Churn")


def test_telco_profile(telco_frame):
    profile = infer_profile(telco_frame, "churn")

    assert (profile.task, profile.positive_label, profile.classes) == (
        "classification",
        "Yes",
        None,
    )
    assert {"tenure", "monthly_charges", "total_charges", "senior_citizen"} <= set(profile.numeric)
    assert {"contract", "internet_service", "payment_method"} <= set(profile.categorical)
    assert profile.excluded == {}


def test_telco_numbers_stored_as_text_are_numeric_after_coercion(telco_frame):
    # The original Telco file stores total_charges as text with blanks for new customers.
    raw = telco_frame.assign(
        total_charges=telco_frame["total_charges"].map(lambda v: " " if pd.isna(v) else f"{v}")
    )
    assert raw["total_charges"].dtype == object

    profile = infer_profile(raw, "churn")
    coerced = coerce_numeric(raw, profile.coerce_numeric)

    assert profile.coerce_numeric == ["total_charges"]
    assert "total_charges" in profile.numeric
    assert pd.api.types.is_float_dtype(coerced["total_charges"])
    assert coerced["total_charges"].isna().sum() == 11
    assert coerced["total_charges"].sum() == pytest.approx(telco_frame["total_charges"].sum())
    assert raw["total_charges"].dtype == object  # the input is left alone


def test_text_that_is_mostly_not_numbers_stays_categorical():
    frame = _with_target(np.array(["Yes", "No"] * 100))
    frame["code"] = ["12", "A7", "15", "B2"] * 50

    profile = infer_profile(frame, "target")

    assert "code" in profile.categorical
    assert profile.coerce_numeric == []


def test_suite_hash_is_stable_and_sensitive():
    suite = {
        "name": "telco",
        "id": "1",
        "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}, "id": "x"}],
        "meta": {},
    }
    same_content_other_ids = {
        "meta": {},
        "expectations": [{"kwargs": {"column": "a"}, "type": "expect_column_to_exist", "id": "y"}],
        "name": "telco",
        "id": "2",
    }
    changed = {
        **suite,
        "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "b"}}],
    }

    assert suite_hash(suite) == suite_hash(same_content_other_ids)
    assert suite_hash(suite) != suite_hash(changed)


@pytest.mark.parametrize(
    ("target_values", "expected_max_drop"),
    [
        pytest.param(np.linspace(1_000, 90_000, ROWS), 0.15, id="regression-relative"),
        pytest.param(np.tile(["yes", "no"], ROWS // 2), 0.05, id="classification-absolute"),
    ],
)
def test_init_writes_a_degradation_threshold_suited_to_the_task(
    tmp_path, target_values, expected_max_drop
):
    from loopml.config import load_config
    from tests.conftest import init_project

    data = tmp_path / "table.csv"
    _with_target(target_values).to_csv(data, index=False)

    init_project(data, "target", "table", tmp_path)

    config = load_config("table", tmp_path)
    assert config.monitoring.performance.max_drop == expected_max_drop


def test_numbers_with_a_decimal_comma_are_named_as_such_not_as_free_text():
    # A European export: "79,85" is a number, not one of 190 distinct words.
    frame = _with_target(np.array(["Yes", "No"] * 100))
    frame["monthly_charges"] = [f"{value:.2f}".replace(".", ",") for value in frame["income"] / 700]

    profile = infer_profile(frame, "target")

    notes = [note for note in profile.notes if note.startswith("'monthly_charges'")]
    assert len(notes) == 1
    assert "decimal comma" in notes[0] and "high-cardinality" not in notes[0]
