"""A table whose own columns are named like loopml's (``row_id``, ``prediction``,
``probability``, ``model_version``, ...) is scored, logged, labelled and explained like any
other: loopml's columns keep their names and the user's column travels as ``feature:NAME``
wherever both meet. No servers: the pure functions ``loopml score``, ``label``, ``explain``
and ``retrain`` call, on real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.estimation.loss_models import PREDICTION_COLUMN, loss_model_input
from loopml.explain import Explanation, explanation_frame
from loopml.features import carried_columns, carried_name, prepare_features, split_holdout
from loopml.labels import LabelStore, joined_predictions, parse_labels, recent_window
from loopml.modeling import build_pipeline
from loopml.scoring import (
    LOG_COLUMNS,
    PredictionLog,
    logged_features,
    score_file,
)

TARGET = "my target"
CLASHING = ["row_id", "prediction", "probability", "model_version"]
RENAMED = {column: f"user_{column}" for column in CLASHING}
OUTPUT_COLUMNS = ["row_id", "prediction", "probability", "model_version"]


def clashing_table(rows: int = 300, seed: int = 1) -> pd.DataFrame:
    """The acceptance check's table: four features named like loopml's own output columns."""
    generator = np.random.default_rng(seed)
    signal = generator.normal(size=rows)
    return pd.DataFrame(
        {
            "row_id": generator.integers(0, 5, rows),
            "prediction": generator.normal(size=rows),
            "probability": signal,
            "model_version": generator.choice(["k", "l"], rows),
            TARGET: np.where(signal + generator.normal(size=rows) > 0, "Ja", "Nein"),
        }
    )


def clashing_config(rename: dict[str, str] | None = None) -> ProjectConfig:
    names = rename or {}
    return ProjectConfig(
        name="coll",
        data="coll.csv",
        target=TARGET,
        task="classification",
        positive_label="Ja",
        columns=ColumnsConfig(
            numeric=[names.get(c, c) for c in ("row_id", "prediction", "probability")],
            categorical=[names.get("model_version", "model_version")],
        ),
    )


def fitted_model(table: pd.DataFrame, config: ProjectConfig):
    """A real loopml pipeline, fitted on ``table``'s features under ``config``'s names."""
    model = build_pipeline(
        "logistic",
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task="classification",
        random_state=0,
    )
    return model.fit(prepare_features(table, config), table[TARGET])


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return clashing_table()


@pytest.fixture(scope="module")
def model(table):
    return fitted_model(table, clashing_config())


@pytest.fixture
def scored(tmp_path, table, model):
    """``loopml score``'s work on a gzipped ``;`` CSV batch of 100 rows without the target."""
    batch = table.iloc[:100].drop(columns=[TARGET])
    source = tmp_path / "coll_batch.csv.gz"
    batch.to_csv(source, index=False, sep=";", compression="gzip")
    log = PredictionLog(tmp_path / "predictions", "coll")
    out = tmp_path / "p.csv"
    rows = score_file(
        model,
        source,
        clashing_config(),
        batch_id="b1",
        model_version="1",
        out=out,
        log=log,
        chunk_rows=40,
    )
    return {"batch": batch, "rows": rows, "output": pd.read_csv(out), "log": log}


# --------------------------------------------------------------------------- carried names


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("tenure", "tenure"),
        ("prediction", "feature:prediction"),
        ("row_id", "feature:row_id"),
        ("Prediction", "Prediction"),
        ("feature:prediction", "feature:feature:prediction"),
    ],
)
def test_a_column_is_carried_under_its_own_name_unless_loopml_uses_it(column, expected):
    assert carried_name(column, LOG_COLUMNS) == expected


def test_carried_names_never_meet_and_read_back_to_the_users_names():
    columns = ["prediction", "feature:prediction", "feature:feature:prediction", "x", "row_id"]
    carried = [carried_name(column, LOG_COLUMNS) for column in columns]
    stored = pd.DataFrame([range(len(columns))], columns=carried)

    assert len(set(carried)) == len(columns)
    assert not set(carried) & set(LOG_COLUMNS)
    back = carried_columns(stored, columns, LOG_COLUMNS)
    assert list(back.columns) == columns
    assert back.iloc[0].tolist() == list(range(len(columns)))


# --------------------------------------------------------------------------- score


def test_score_writes_one_row_per_input_row_and_logs_the_batch(scored):
    output = scored["output"]

    assert scored["rows"] == 100 and len(output) == 100
    assert list(output.columns) == OUTPUT_COLUMNS
    assert output["row_id"].tolist() == [f"b1-{n}" for n in range(100)]
    assert set(output["model_version"].astype(str)) == {"1"}
    assert scored["log"].batches() == ["b1"]


def test_predictions_equal_those_of_the_same_table_with_the_columns_renamed(
    tmp_path, table, scored
):
    renamed_config = clashing_config(RENAMED)
    renamed_model = fitted_model(table.rename(columns=RENAMED), renamed_config)
    source = tmp_path / "renamed_batch.csv"
    scored["batch"].rename(columns=RENAMED).to_csv(source, index=False)
    out = tmp_path / "renamed.csv"
    score_file(
        renamed_model,
        source,
        renamed_config,
        batch_id="b1",
        model_version="1",
        out=out,
        log=PredictionLog(tmp_path / "renamed-predictions", "coll"),
    )

    output, renamed = scored["output"], pd.read_csv(out)
    assert output["prediction"].tolist() == renamed["prediction"].tolist()
    np.testing.assert_allclose(output["probability"], renamed["probability"], rtol=1e-12)
    assert set(output["prediction"]) == {"Ja", "Nein"}


def test_the_log_keeps_loopmls_columns_and_the_users_values_under_carried_names(scored):
    logged = scored["log"].read()
    config = clashing_config()

    assert logged.columns.is_unique
    assert logged["row_id"].tolist() == scored["output"]["row_id"].tolist()
    assert logged["prediction"].tolist() == scored["output"]["prediction"].tolist()
    assert {f"feature:{column}" for column in CLASHING} <= set(logged.columns)
    pd.testing.assert_frame_equal(
        logged_features(logged, config),
        prepare_features(scored["batch"], config).reset_index(drop=True),
    )


# --------------------------------------------------------------------------- label, retrain


def test_late_labels_join_by_loopmls_row_id_and_retraining_reads_the_users_features(
    tmp_path, table, scored
):
    config = clashing_config()
    log = scored["log"]
    truth = pd.DataFrame(
        {"row_id": scored["output"]["row_id"], TARGET: table[TARGET].iloc[:100].to_numpy()}
    )
    known = set(log.read(columns=["row_id"])["row_id"].astype(str))
    store = LabelStore(tmp_path / "labels", "coll")
    store.add_labels(parse_labels(truth, config, known, ["Ja", "Nein"]))

    joined = joined_predictions(log, store)
    window = recent_window(joined, store.labelled_batches(), config)

    assert len(joined) == 100 and joined.columns.is_unique
    assert joined["target"].tolist() == truth[TARGET].tolist()
    assert list(window.columns) == [*config.columns.features, TARGET]
    expected = prepare_features(scored["batch"], config)
    np.testing.assert_array_equal(window["row_id"], expected["row_id"])  # the user's 0..4
    np.testing.assert_array_equal(window["model_version"], expected["model_version"])
    assert window[TARGET].tolist() == truth[TARGET].tolist()


def test_a_labelled_batch_with_a_column_named_like_its_arrival_time_keeps_it(tmp_path):
    config = ProjectConfig(
        name="arrivals",
        data="arrivals.csv",
        target="churn",
        task="classification",
        positive_label="Yes",
        columns=ColumnsConfig(numeric=["received_at", "x"]),
    )
    batch = pd.DataFrame(
        {"received_at": [3.0, 1.0, 2.0], "x": [0.1, 0.2, 0.3], "churn": ["Yes", "No", "Yes"]}
    )
    store = LabelStore(tmp_path / "labels", "arrivals")
    store.add_labelled_batch(batch, "b1")

    window = recent_window(pd.DataFrame(), store.labelled_batches(), config)

    pd.testing.assert_frame_equal(window, batch)


# --------------------------------------------------------------------------- explain, train


def test_explain_output_carries_a_feature_named_like_its_own_columns():
    features = pd.DataFrame({"row_id": [1.0, 2.0], "output": [3.0, 4.0], "x": [5.0, 6.0]})
    contributions = pd.DataFrame({"row_id": [0.5, -0.1], "output": [0.2, 0.3], "x": [0.0, 0.1]})
    explanation = Explanation(
        contributions, np.zeros(2), contributions.sum(axis=1).to_numpy(), "probability", "tree"
    )

    table = explanation_frame(explanation, features, pd.Series(["r1", "r2"]), top=1)

    assert table.columns.is_unique
    assert table["row_id"].tolist() == ["r1", "r2"]
    np.testing.assert_allclose(table["output"], [0.7, 0.3])
    assert table["feature:row_id"].tolist() == [0.5, -0.1]
    assert table["feature:output"].tolist() == [0.2, 0.3]
    assert table["x"].tolist() == [0.0, 0.1]
    assert table["reason_1"].tolist() == ["row_id", "output"]  # the table's own names


def test_a_time_ordered_split_keeps_a_column_named_like_its_sort_key():
    config = ProjectConfig(
        name="timed",
        data="timed.csv",
        target="y",
        task="regression",
        time_column="at",
        columns=ColumnsConfig(numeric=["_order"]),
    )
    frame = pd.DataFrame(
        {
            "at": ["2026-01-05", "2026-01-01", "2026-01-03", "2026-01-02", "2026-01-04"] * 4,
            "_order": np.arange(20.0),
            "y": np.arange(20.0),
        }
    )

    train, test = split_holdout(frame, config)

    assert list(train.columns) == list(frame.columns)
    pd.testing.assert_frame_equal(pd.concat([train, test]).sort_index(), frame)
    assert pd.to_datetime(train["at"]).max() <= pd.to_datetime(test["at"]).min()


def test_performance_estimation_keeps_a_feature_named_like_the_prediction_column():
    features = pd.DataFrame({PREDICTION_COLUMN: [1.0, 2.0], "x": [3.0, 4.0]})

    frame = loss_model_input(features, np.array([0.0, 1.0]))

    assert frame[PREDICTION_COLUMN].tolist() == [0.0, 1.0]
    assert frame[f"feature:{PREDICTION_COLUMN}"].tolist() == [1.0, 2.0]
    assert frame["x"].tolist() == [3.0, 4.0]
