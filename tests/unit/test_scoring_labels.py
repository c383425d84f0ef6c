"""Pure logic of the maintenance loop: scoring and its prediction log, late labels and the
recent window, the monitoring reservoir sample and the performance verdict. No servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from loopml.config import ColumnsConfig, ProjectConfig, RetrainingConfig
from loopml.data import write_parquet
from loopml.errors import DataError
from loopml.features import align_dtypes, prepare_features
from loopml.labels import (
    LabelStore,
    known_classes,
    parse_labels,
    recent_window,
    split_recent_window,
)
from loopml.modeling import with_threshold
from loopml.monitoring import ReservoirSample, performance_verdict
from loopml.scoring import (
    PredictionLog,
    check_reasons,
    predict,
    row_ids,
    score_chunk,
    score_file,
    write_output_chunks,
)

SCORED_AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _config(**options) -> ProjectConfig:
    return ProjectConfig(
        name="toy",
        data="toy.csv",
        target="churn",
        task="classification",
        positive_label=options.pop("positive_label", "Yes"),
        columns=ColumnsConfig(numeric=["x"], categorical=["plan"]),
        **options,
    )


@pytest.fixture(scope="module")
def toy_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    plan = rng.choice(["basic", "plus"], size=400)
    churn = np.where(x + rng.normal(scale=0.7, size=400) > 0, "Yes", "No")
    return pd.DataFrame(
        {"customer": [f"c{i}" for i in range(400)], "x": x, "plan": plan, "churn": churn}
    )


@pytest.fixture(scope="module")
def toy_model(toy_frame):
    """A real scikit-learn model on the numeric feature (``plan`` is ignored by it)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    model = Pipeline(
        [
            ("columns", ColumnTransformer([("x", "passthrough", ["x"])])),
            ("logistic", LogisticRegression()),
        ]
    )
    return model.fit(toy_frame[["x", "plan"]], toy_frame["churn"])


# --------------------------------------------------------------------------- row ids


def test_row_ids_without_id_column_number_rows_from_the_offset():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=[10, 11, 12])

    ids = row_ids(frame, _config(), "b123", offset=200)

    assert list(ids) == ["b123-200", "b123-201", "b123-202"]
    assert list(ids.index) == [0, 1, 2]


def test_row_ids_with_id_column_are_the_column_as_text():
    frame = pd.DataFrame({"customer": [7, 8, 9], "x": [1.0, 2.0, 3.0]}, index=[5, 6, 7])

    ids = row_ids(frame, _config(id_column="customer"), "b123", offset=0)

    assert list(ids) == ["7", "8", "9"]


def test_row_ids_with_id_column_missing_from_the_batch_is_an_error():
    with pytest.raises(DataError, match="no id column 'customer'"):
        row_ids(pd.DataFrame({"x": [1.0]}), _config(id_column="customer"), "b1", offset=0)


@pytest.mark.parametrize("repeat_at", [30, 150], ids=["same-chunk", "later-chunk"])
def test_a_batch_that_repeats_an_id_is_refused_and_nothing_is_written(
    toy_model, toy_frame, tmp_path, repeat_at
):
    from loopml.scoring import score_file

    batch = toy_frame.head(200).copy()
    batch.loc[repeat_at, "customer"] = "c7"  # c7 is row 7's id too
    source = tmp_path / "batch.csv"
    batch.to_csv(source, index=False)
    log = PredictionLog(tmp_path / "log", "toy")

    with pytest.raises(DataError, match=r"repeats ids within this batch \(e.g. 'c7'\)"):
        score_file(
            toy_model,
            source,
            _config(id_column="customer"),
            batch_id="b1",
            model_version="1",
            out=tmp_path / "scores.csv",
            log=log,
            chunk_rows=100,
        )

    assert not (tmp_path / "scores.csv").exists()
    assert log.batches() == [] and log.read().empty


# --------------------------------------------------------------------------- thresholding


def _thresholded(model, threshold: float | None, positive_label: str = "Yes"):
    """The model as training registers it: its decision threshold inside (None: a bare one)."""
    return model if threshold is None else with_threshold(model, threshold, positive_label)


@pytest.mark.parametrize("threshold", [None, 0.2, 0.5, 0.8])
def test_binary_labels_are_the_positive_probability_cut_at_the_threshold(
    toy_model, toy_frame, threshold
):
    features = toy_frame[["x", "plan"]]
    labels, scores = predict(_thresholded(toy_model, threshold), features, _config())

    expected_scores = toy_model.predict_proba(features)[:, list(toy_model.classes_).index("Yes")]
    np.testing.assert_allclose(scores, expected_scores)
    cut = 0.5 if threshold is None else threshold
    assert list(labels) == ["Yes" if s >= cut else "No" for s in scores]
    assert 0 < (labels == "Yes").sum() < len(labels)


@pytest.mark.parametrize("threshold", [None, 0.2, 0.5, 0.8])
def test_labels_from_probabilities_are_what_the_models_predict_returns(
    toy_model, toy_frame, threshold
):
    """Scoring reads labels off the one predict_proba pass; they must be model.predict's."""
    from loopml.scoring import labels_from_probabilities

    features = toy_frame[["x", "plan"]]
    model = _thresholded(toy_model, threshold)
    multiclass = LogisticRegression().fit(
        toy_frame[["x"]], np.digitize(toy_frame["x"], [-0.5, 0.5])
    )

    for fitted, rows in ((model, features), (multiclass, toy_frame[["x"]])):
        labels = labels_from_probabilities(fitted, fitted.predict_proba(rows))
        np.testing.assert_array_equal(labels, fitted.predict(rows))


def test_multiclass_integer_labels_keep_their_dtype(toy_frame):
    """Classes 0/1/2 come out as integers, not an object array scikit-learn cannot classify."""
    from sklearn.metrics import accuracy_score

    classes = np.digitize(toy_frame["x"], [-0.5, 0.5])
    model = LogisticRegression().fit(toy_frame[["x"]], classes)
    config = _config(positive_label=None, classes=[0, 1, 2])

    labels, scores = predict(model, toy_frame[["x"]], config)

    assert labels.dtype.kind == "i"
    assert accuracy_score(classes, labels) > 0.8
    assert np.all((scores > 1 / 3) & (scores <= 1))


def test_a_higher_threshold_predicts_fewer_positives(toy_model, toy_frame):
    features = toy_frame[["x", "plan"]]
    low, _ = predict(_thresholded(toy_model, 0.2), features, _config())
    high, _ = predict(_thresholded(toy_model, 0.8), features, _config())

    assert (high == "Yes").sum() < (low == "Yes").sum()


def test_the_positive_label_decides_which_probability_is_reported(toy_model, toy_frame):
    features = toy_frame[["x", "plan"]]
    _, yes_scores = predict(toy_model, features, _config(positive_label="Yes"))
    labels, no_scores = predict(
        _thresholded(toy_model, 0.5, "No"), features, _config(positive_label="No")
    )

    np.testing.assert_allclose(yes_scores + no_scores, 1.0)
    assert list(labels) == ["No" if s >= 0.5 else "Yes" for s in no_scores]


def test_a_positive_label_the_model_never_saw_is_an_error(toy_model, toy_frame):
    with pytest.raises(DataError, match="'Maybe' is not among"):
        predict(toy_model, toy_frame[["x", "plan"]], _config(positive_label="Maybe"))


def test_score_chunk_output_and_log_rows(toy_model, toy_frame):
    chunk = toy_frame.iloc[100:150]
    output, log = score_chunk(
        _thresholded(toy_model, 0.4),
        chunk,
        _config(),
        batch_id="bx",
        model_version="3",
        offset=100,
        scored_at=SCORED_AT,
    )

    assert list(output.columns) == ["row_id", "prediction", "probability", "model_version"]
    assert list(output["row_id"]) == [f"bx-{n}" for n in range(100, 150)]
    assert set(output["model_version"]) == {"3"}
    assert {"x", "plan", "batch_id", "scored_at"} <= set(log.columns)
    assert list(log["row_id"]) == list(output["row_id"])
    np.testing.assert_allclose(log["x"], chunk["x"])
    assert set(log["batch_id"]) == {"bx"} and set(log["scored_at"]) == {pd.Timestamp(SCORED_AT)}


def test_reasons_per_row_do_not_depend_on_the_chunks_and_stay_out_of_the_log(
    toy_model, toy_frame, tmp_path
):
    source = tmp_path / "batch.csv"
    toy_frame.iloc[:60].drop(columns="churn").to_csv(source, index=False)
    outputs, logs = {}, {}
    for chunk_rows in (7, 1_000):
        out = tmp_path / f"scored-{chunk_rows}.csv"
        log = PredictionLog(tmp_path / f"log-{chunk_rows}", "toy")
        score_file(
            _thresholded(toy_model, 0.4),
            source,
            _config(),
            batch_id="bx",
            model_version="3",
            out=out,
            log=log,
            chunk_rows=chunk_rows,
            reasons=5,  # more than the two feature columns: one reason per column
            background=toy_frame.iloc[200:],
        )
        outputs[chunk_rows], logs[chunk_rows] = pd.read_csv(out), log.read()

    scored = outputs[7]
    assert list(scored.columns) == [
        "row_id",
        "prediction",
        "probability",
        "model_version",
        "reason_1",
        "reason_1_contribution",
        "reason_2",
        "reason_2_contribution",
    ]
    pd.testing.assert_frame_equal(scored, outputs[1_000])
    # The model ignores plan: x leads every row, plan follows with nothing.
    assert set(scored["reason_1"]) == {"x"} and set(scored["reason_2"]) == {"plan"}
    assert (scored["reason_1_contribution"] != 0).all()
    assert (scored["reason_2_contribution"] == 0).all()
    assert not [column for column in logs[7].columns if column.startswith("reason_")]


@pytest.mark.parametrize("reasons", [0, -1])
def test_fewer_than_one_reason_per_row_is_refused(reasons):
    with pytest.raises(DataError, match="--reasons must be at least 1"):
        check_reasons(reasons)


# --------------------------------------------------------------------------- prediction log


def _log_rows(batch_id: str, rows: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_id": [f"{batch_id}-{n}" for n in range(start, start + rows)],
            "prediction": ["No"] * rows,
            "probability": np.linspace(0, 1, rows),
            "model_version": ["1"] * rows,
            "batch_id": [batch_id] * rows,
        }
    )


def test_prediction_log_writes_a_batch_with_a_success_marker(tmp_path):
    log = PredictionLog(tmp_path, "toy")
    assert not log.has_batch("b1")
    assert log.read().empty

    rows = log.write_batch("b1", [_log_rows("b1", 30), _log_rows("b1", 20, start=30)])

    assert rows == 50
    assert log.has_batch("b1") and log.batches() == ["b1"]
    assert (tmp_path / "toy" / "batch=b1" / "_SUCCESS").is_file()
    assert list(log.read()["row_id"]) == [f"b1-{n}" for n in range(50)]
    assert list(log.read(columns=["row_id"]).columns) == ["row_id"]


def test_prediction_log_rewriting_a_batch_replaces_it(tmp_path):
    log = PredictionLog(tmp_path, "toy")
    log.write_batch("b1", [_log_rows("b1", 40)])
    log.write_batch("b2", [_log_rows("b2", 10)])

    log.write_batch("b1", [_log_rows("b1", 40)])

    logged = log.read()
    assert len(logged) == 50 and logged["row_id"].is_unique
    assert log.batches() == ["b1", "b2"]


def test_prediction_log_a_failed_write_leaves_nothing_behind(tmp_path):
    log = PredictionLog(tmp_path, "toy")
    log.write_batch("b0", [_log_rows("b0", 5)])

    def parts():
        yield _log_rows("b1", 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        log.write_batch("b1", parts())

    assert not log.has_batch("b1")
    assert log.batches() == ["b0"]
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == ["batch=b0"]
    assert len(log.read()) == 5


def test_prediction_log_ignores_a_batch_folder_without_its_marker(tmp_path):
    log = PredictionLog(tmp_path, "toy")
    log.write_batch("b1", [_log_rows("b1", 5)])
    (tmp_path / "toy" / "batch=b1" / "_SUCCESS").unlink()

    assert not log.has_batch("b1")
    assert log.batches() == [] and log.read().empty


# --------------------------------------------------------------------------- output files


def _output_chunks():
    for start in (0, 3, 6):
        yield pd.DataFrame(
            {
                "row_id": [f"b-{n}" for n in range(start, start + 3)],
                "prediction": ["Yes", "No", "No"],
                "probability": [0.9, 0.1, 0.2],
                "model_version": ["2"] * 3,
            }
        )


@pytest.mark.parametrize("file_name", ["out.csv", "out.parquet"])
def test_write_output_chunks_streams_every_chunk_once(tmp_path, file_name):
    path = tmp_path / "nested" / file_name

    rows = write_output_chunks(_output_chunks(), path)

    written = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    expected = pd.concat(list(_output_chunks()), ignore_index=True)
    assert rows == 9
    assert list(written.columns) == list(expected.columns)
    assert list(written["row_id"]) == list(expected["row_id"])
    np.testing.assert_allclose(written["probability"], expected["probability"])
    assert [p.name for p in path.parent.iterdir()] == [file_name]  # no temp file left


def test_write_output_chunks_without_rows_is_an_error_and_writes_nothing(tmp_path):
    path = tmp_path / "out.csv"

    with pytest.raises(DataError, match="no rows"):
        write_output_chunks(iter([pd.DataFrame(columns=["row_id", "prediction"])]), path)

    assert list(tmp_path.iterdir()) == []


def test_write_output_chunks_keeps_an_old_file_when_scoring_fails(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("previous predictions\n")

    def failing():
        yield next(_output_chunks())
        raise DataError("chunk 2 is broken")

    with pytest.raises(DataError, match="broken"):
        write_output_chunks(failing(), path)

    assert path.read_text() == "previous predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# --------------------------------------------------------------------------- labels


KNOWN = {"b1-0", "b1-1", "b1-2", "b1-3"}


def test_parse_labels_normalises_ids_and_targets():
    frame = pd.DataFrame({"row_id": ["b1-0", "b1-2"], "churn": ["Yes", "No"], "note": ["a", "b"]})

    labels = parse_labels(frame, _config(), KNOWN)

    assert list(labels.columns) == ["row_id", "target", "labelled_at"]
    assert list(labels["row_id"]) == ["b1-0", "b1-2"]
    assert list(labels["target"]) == ["Yes", "No"]
    assert labels["labelled_at"].notna().all()


def test_parse_labels_uses_the_configured_id_column():
    frame = pd.DataFrame({"customer": [17, 18], "churn": ["Yes", "No"]})

    labels = parse_labels(frame, _config(id_column="customer"), {"17", "18"})

    assert list(labels["row_id"]) == ["17", "18"]


@pytest.mark.parametrize(
    ("columns", "missing"),
    [(["row_id"], "churn"), (["churn"], "row_id"), (["id", "label"], "row_id, churn")],
)
def test_parse_labels_names_missing_columns(columns, missing):
    frame = pd.DataFrame({column: ["b1-0"] for column in columns})

    with pytest.raises(DataError, match=f"missing: {missing}"):
        parse_labels(frame, _config(), KNOWN)


def test_parse_labels_refuses_unknown_row_ids_and_names_them():
    frame = pd.DataFrame({"row_id": ["b1-0", "zz-1", "zz-2"], "churn": ["Yes", "No", "No"]})

    with pytest.raises(DataError) as failure:
        parse_labels(frame, _config(), KNOWN)

    message = str(failure.value)
    assert "2 of 3 row ids were never scored" in message
    assert "zz-1" in message and "zz-2" in message
    assert "nothing was stored" in message


def test_parse_labels_refuses_duplicate_row_ids():
    frame = pd.DataFrame({"row_id": ["b1-0", "b1-0", "b1-1"], "churn": ["Yes", "No", "No"]})

    with pytest.raises(DataError, match="1 row ids appear more than once"):
        parse_labels(frame, _config(), KNOWN)


def test_parse_labels_refuses_a_class_the_model_never_knew_and_names_both():
    frame = pd.DataFrame({"row_id": ["b1-0", "b1-1", "b1-2"], "churn": ["Maybe", "yes", "No"]})

    with pytest.raises(DataError) as failure:
        parse_labels(frame, _config(), KNOWN, ["No", "Yes"])

    message = str(failure.value)
    assert "1 label rows have a 'churn' class the model never knew: 'Maybe'" in message
    assert "(known: 'No', 'Yes')" in message and "nothing was stored" in message
    assert "\n" not in message


def test_known_classes_come_from_the_config_else_the_suite_target_set():
    suite = {
        "expectations": [
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "plan",
             "value_set": ["basic", "plus"]}},
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "churn",
             "value_set": ["No", "Yes"]}},
        ]
    }  # fmt: skip

    assert known_classes(_config(), suite) == ["No", "Yes"]
    assert known_classes(_config(), None) is None
    assert known_classes(_config(positive_label=None, classes=["a", "b", "c"]), suite) == [
        "a",
        "b",
        "c",
    ]


def test_the_same_label_file_sent_again_is_stored_once(tmp_path):
    store = LabelStore(tmp_path, "toy")
    frame = pd.DataFrame({"row_id": ["b1-0", "b1-1"], "churn": ["Yes", "No"]})
    first = parse_labels(frame, _config(), KNOWN)
    again = parse_labels(frame, _config(), KNOWN)
    again["labelled_at"] = first["labelled_at"].iloc[0] + pd.Timedelta(minutes=5)

    assert store.add_labels(first) == store.add_labels(again)
    assert len(list((tmp_path / "toy" / "labels").glob("*.parquet"))) == 1
    assert len(store.labels()) == 2


def test_parse_labels_refuses_rows_without_a_target():
    frame = pd.DataFrame({"row_id": ["b1-0", "b1-1"], "churn": ["Yes", None]})

    with pytest.raises(DataError, match="1 label rows have no 'churn' value"):
        parse_labels(frame, _config(), KNOWN)


def test_label_store_a_later_label_corrects_an_earlier_one(tmp_path):
    store = LabelStore(tmp_path, "toy")
    first = parse_labels(
        pd.DataFrame({"row_id": ["b1-0", "b1-1"], "churn": ["Yes", "No"]}), _config(), KNOWN
    )
    second = parse_labels(pd.DataFrame({"row_id": ["b1-1"], "churn": ["Yes"]}), _config(), KNOWN)
    second["labelled_at"] = first["labelled_at"].iloc[0] + pd.Timedelta(seconds=1)

    store.add_labels(first)
    store.add_labels(second)
    store.add_labels(first)  # the same file again adds nothing

    labels = store.labels().set_index("row_id")["target"].to_dict()
    assert labels == {"b1-0": "Yes", "b1-1": "Yes"}
    assert len(list((tmp_path / "toy" / "labels").glob("*.parquet"))) == 2


# --------------------------------------------------------------------------- recent window


def _joined(at: list[datetime], start: int = 0) -> pd.DataFrame:
    """Labelled predictions as ``joined_predictions`` returns them."""
    count = len(at)
    return pd.DataFrame(
        {
            "row_id": [f"s-{n}" for n in range(start, start + count)],
            "x": np.arange(start, start + count, dtype=float),
            "plan": ["basic"] * count,
            "scored_at": pd.to_datetime(at, utc=True),
            "target": ["Yes"] * count,
        }
    )


def _labelled_batch(at: datetime, xs: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"x": xs, "plan": ["plus"] * len(xs), "churn": ["No"] * len(xs), "received_at": at}
    )


def test_recent_window_is_oldest_first_and_keeps_the_newest_rows():
    now = datetime(2026, 11, 20, tzinfo=UTC)
    joined = _joined([now - timedelta(days=d) for d in (5, 1, 3)])
    batches = _labelled_batch(now - timedelta(days=2), [100.0, 101.0])
    config = _config(retraining=RetrainingConfig(window_rows=4, max_age_days=30))

    window = recent_window(joined, batches, config, now=now)

    # Ages 5, 3, 2, 2, 1 days: the oldest one drops out of a 4-row window.
    assert list(window["x"]) == [2.0, 100.0, 101.0, 1.0]
    assert list(window.columns) == ["x", "plan", "churn"]
    assert list(window["churn"]) == ["Yes", "No", "No", "Yes"]


def test_recent_window_ages_out_old_rows():
    now = datetime(2026, 11, 20, tzinfo=UTC)
    joined = _joined([now - timedelta(days=d) for d in (100, 40, 10)])
    batches = _labelled_batch(now - timedelta(days=31), [7.0])
    config = _config(retraining=RetrainingConfig(window_rows=100, max_age_days=30))

    window = recent_window(joined, batches, config, now=now)

    assert list(window["x"]) == [2.0]


def test_recent_window_without_labels_is_empty_with_the_training_columns():
    window = recent_window(pd.DataFrame(), pd.DataFrame(), _config())

    assert window.empty and list(window.columns) == ["x", "plan", "churn"]


def test_logged_rows_take_the_reference_dtypes_back_before_they_join_it():
    reference = pd.DataFrame(
        {"member": [True, False], "visits": [3, 4], "plan": ["basic", "plus"]}
    ).assign(churn=["No", "Yes"])
    config = ProjectConfig(
        name="toy",
        data="toy.csv",
        target="churn",
        task="classification",
        positive_label="Yes",
        columns=ColumnsConfig(numeric=["visits"], categorical=["member", "plan"]),
    )
    logged = prepare_features(reference, config).assign(churn=["Yes", "No"])
    assert list(logged["member"]) == ["True", "False"]  # as the prediction log keeps them

    aligned = align_dtypes(logged, reference)
    joined = pd.concat([reference, aligned], ignore_index=True)

    assert joined["member"].dtype == bool
    assert list(joined["member"]) == [True, False, True, False]
    assert joined["visits"].dtype.kind in "if" and list(joined["visits"]) == [3, 4, 3, 4]
    assert list(joined["plan"]) == ["basic", "plus", "basic", "plus"]


def test_aligning_a_flag_with_gaps_keeps_the_gaps():
    reference = pd.DataFrame({"member": [True, False]})
    logged = pd.DataFrame({"member": ["True", None, "False"]})

    aligned = align_dtypes(logged, reference)

    assert aligned["member"].tolist()[0] is True and aligned["member"].tolist()[2] is False
    assert pd.isna(aligned["member"].iloc[1])


def test_write_parquet_keeps_a_column_mixing_types_as_text(tmp_path):
    mixed = pd.DataFrame({"member": [True, "True", False], "x": [1.0, 2.0, 3.0]})
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):  # what pandas alone does
        mixed.to_parquet(tmp_path / "plain.parquet")

    path = write_parquet(mixed, tmp_path / "mixed.parquet")

    back = pd.read_parquet(path)
    assert list(back["member"]) == ["True", "True", "False"] and list(back["x"]) == [1.0, 2.0, 3.0]


# --------------------------------------------------------------------------- reservoir sample


def test_reservoir_sample_is_bounded_and_counts_every_row():
    sample = ReservoirSample(250, random_state=1)
    for start in range(0, 10_000, 700):
        sample.add(pd.DataFrame({"n": np.arange(start, min(start + 700, 10_000))}))

    frame = sample.frame()
    assert sample.rows_seen == 10_000
    assert len(frame) == 250
    assert frame["n"].is_unique
    assert list(frame.index) == list(range(250))


def test_reservoir_sample_keeps_everything_from_a_short_stream_in_order():
    sample = ReservoirSample(100)
    sample.add(pd.DataFrame({"n": range(30)}))
    sample.add(pd.DataFrame({"n": range(30, 60)}))

    assert list(sample.frame()["n"]) == list(range(60))
    assert ReservoirSample(5).frame().empty


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reservoir_sample_is_uniform_over_the_stream(seed):
    """Early, middle and late rows are equally likely to be kept, whatever the chunking."""
    sample = ReservoirSample(1_000, random_state=seed)
    for start in range(0, 20_000, 1_300):
        sample.add(pd.DataFrame({"n": np.arange(start, min(start + 1_300, 20_000))}))

    kept = sample.frame()["n"].to_numpy()
    per_tenth = np.bincount(kept // 2_000, minlength=10)
    assert stats.chisquare(per_tenth).pvalue > 0.001, per_tenth
    assert per_tenth.min() > 60  # each tenth of the stream expects 100


# --------------------------------------------------------------------------- performance verdict


def _verdict(current: dict, reference: dict, metric: str = "roc_auc", rows: int = 500, **kw):
    return performance_verdict(
        current,
        reference,
        metric=metric,
        max_drop=kw.get("max_drop", 0.05),
        rows=rows,
        min_rows=kw.get("min_rows", 50),
    )


@pytest.mark.parametrize(
    ("current", "degraded"),
    [(0.84, False), (0.80, False), (0.79, True), (0.55, True), (0.90, False)],
)
def test_performance_is_degraded_when_the_metric_drops_more_than_allowed(current, degraded):
    verdict = _verdict({"roc_auc": current}, {"roc_auc": 0.85})

    assert verdict["degraded"] is degraded
    assert verdict["drop"] == pytest.approx(0.85 - current)
    assert verdict["reference"] == {"roc_auc": 0.85}


def test_performance_of_an_error_metric_degrades_when_it_rises():
    assert _verdict({"rmse": 13.0}, {"rmse": 10.0}, metric="rmse", max_drop=0.2)["degraded"]
    assert not _verdict({"rmse": 8.0}, {"rmse": 10.0}, metric="rmse", max_drop=0.2)["degraded"]


@pytest.mark.parametrize("scale", [0.001, 1.0, 1_000.0, 1e6])
def test_an_error_metric_is_judged_relative_to_the_champion_whatever_the_target_units(scale):
    """RMSE is in the target's units: a 10% rise is not degraded, a 30% rise is, at any scale."""
    reference = {"rmse": 10.0 * scale}

    slightly_worse = _verdict({"rmse": 11.0 * scale}, reference, metric="rmse", max_drop=0.15)
    much_worse = _verdict({"rmse": 13.0 * scale}, reference, metric="rmse", max_drop=0.15)

    assert slightly_worse["degraded"] is False
    assert slightly_worse["drop"] == pytest.approx(0.1)
    assert much_worse["degraded"] is True
    assert much_worse["drop_units"] == "fraction of champion"


def test_performance_on_too_few_labelled_rows_gives_no_verdict():
    verdict = _verdict({"roc_auc": 0.3}, {"roc_auc": 0.85}, rows=20, min_rows=50)

    assert verdict["degraded"] is False and verdict["drop"] is None
    assert "20 labelled rows" in verdict["note"]


def test_performance_with_the_metric_undefined_on_the_batch_gives_no_verdict():
    # A batch with one class only has no ROC AUC.
    verdict = _verdict({"accuracy": 0.2}, {"roc_auc": 0.85})

    assert verdict["degraded"] is False
    assert "roc_auc is not defined" in verdict["note"]


# --------------------------------------------------------------------------- recent window split


def _window(rows: int) -> pd.DataFrame:
    """A time-ordered labelled window: row i has x = i."""
    churn = np.where(np.arange(rows) % 2, "Yes", "No")
    return pd.DataFrame({"x": np.arange(rows, dtype=float), "plan": "basic", "churn": churn})


COLUMNS = ["x", "plan", "churn"]


def test_the_newest_share_of_the_window_judges_and_the_rest_trains():
    train, evaluation, dropped = split_recent_window(
        _window(100), COLUMNS, evaluation_share=0.3, min_evaluation_rows=10
    )

    assert evaluation["x"].tolist() == list(range(70, 100))
    assert train["x"].tolist() == list(range(70))
    assert dropped == 0


def test_copies_of_judged_rows_never_train():
    """The same rows labelled twice (monitored with the target, then labelled) must not leak."""
    window = pd.concat([_window(50), _window(50)], ignore_index=True)  # rows 0-49, then again

    train, evaluation, dropped = split_recent_window(
        window, COLUMNS, evaluation_share=0.3, min_evaluation_rows=10
    )

    assert set(evaluation["x"]) == set(range(20, 50))
    assert set(train["x"]).isdisjoint(set(evaluation["x"]))
    assert dropped == 30  # the first copies of rows 20-49
    assert len(train) == 70 - 30


def test_copies_of_the_frozen_held_out_rows_never_train_even_as_text():
    held_out = _window(10).assign(x=lambda f: f["x"].astype(int))  # 0..9 as integers
    window = _window(20)  # x as floats: 0.0 .. 19.0

    train, evaluation, dropped = split_recent_window(
        window, COLUMNS, evaluation_share=0.3, min_evaluation_rows=10, held_out=held_out
    )

    assert evaluation.empty  # 6 rows would judge: below the minimum, so none do
    assert train["x"].tolist() == list(range(10, 20))
    assert dropped == 10
