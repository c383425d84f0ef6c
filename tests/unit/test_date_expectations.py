"""Date columns in the suggested suite: their text format and their range, checked by GX for real
on tables written to CSV and Parquet and read back as ``loopml validate`` reads them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.data import read_table
from loopml.features import align_dtypes
from loopml.profiling import infer_profile, suggest_suite
from loopml.validation import describe_failures, validate_frame


def weird_table(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A number, a category, ISO date text with nulls, text with mixed offsets, a 0/1 target."""
    generator = np.random.default_rng(seed)
    numbers = generator.normal(0, 1, rows)
    moments = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        generator.integers(0, 365 * 86_400, rows), unit="s"
    )
    offsets = generator.choice(["+00:00", "+01:00"], rows)
    frame = pd.DataFrame(
        {
            "a": numbers,
            "g": generator.choice(["x", "y", "z"], rows),
            "when": moments.strftime("%Y-%m-%dT%H:%M:%S"),
            "when_tz": [
                moment.strftime("%Y-%m-%dT%H:%M:%S") + offset
                for moment, offset in zip(moments[::-1], offsets, strict=True)
            ],
            "target": (numbers + generator.normal(0, 0.5, rows) > 0).astype(int),
        }
    )
    frame.loc[generator.random(rows) < 0.05, "when"] = None
    return frame


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The table as a Parquet export holds it: datetimes, one column in a time zone."""
    when_tz = pd.to_datetime(frame["when_tz"], utc=True).dt.tz_convert("Europe/Paris")
    return frame.assign(when=pd.to_datetime(frame["when"]), when_tz=when_tz)


def config_for(frame: pd.DataFrame) -> ProjectConfig:
    profile = infer_profile(frame, "target")
    return ProjectConfig(
        name="weird",
        data="weird.csv",
        target="target",
        task=profile.task,
        positive_label=profile.positive_label,
        columns=ColumnsConfig(
            numeric=profile.numeric,
            categorical=profile.categorical,
            datetime=profile.datetime,
            excluded=profile.excluded,
        ),
    )


def written(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """``frame`` written to ``path`` (CSV or Parquet) and read back as loopml reads batches."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return read_table(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dates")


@pytest.fixture(scope="module")
def csv_suite(folder) -> dict:
    reference = written(weird_table(), folder / "weird.csv")
    return json.loads(json.dumps(suggest_suite(reference, config_for(reference))))


@pytest.fixture(scope="module")
def parquet_suite(folder) -> dict:
    reference = written(typed(weird_table()), folder / "weird.parquet")
    return json.loads(json.dumps(suggest_suite(reference, config_for(reference))))


def _date_checks(suite: dict, column: str) -> dict[str, dict]:
    return {
        expectation["type"]: expectation["kwargs"]
        for expectation in suite["expectations"]
        if expectation["kwargs"].get("column") == column
    }


def test_the_suite_says_how_dates_are_written_and_where_they_fall(csv_suite):
    when = _date_checks(csv_suite, "when")
    assert when["expect_column_values_to_match_strftime_format"]["strftime_format"] == (
        "%Y-%m-%dT%H:%M:%S"
    )
    # A year of dates, widened by five years on each side, to whole days.
    assert when["expect_column_values_to_be_between"]["min_value"][:7] == "2019-01"
    assert when["expect_column_values_to_be_between"]["max_value"][:7] == "2029-12"
    assert when["expect_column_values_to_be_between"]["max_value"].endswith("T00:00:00")
    when_tz = _date_checks(csv_suite, "when_tz")
    assert when_tz["expect_column_values_to_match_strftime_format"]["strftime_format"] == (
        "%Y-%m-%dT%H:%M:%S%z"
    )
    assert "expect_column_values_to_be_between" in when_tz


def test_profiling_mixed_offsets_prints_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        profile = infer_profile(weird_table(), "target")
    assert {"when", "when_tz"} <= set(profile.datetime)


@pytest.mark.parametrize(
    ("suite_name", "as_datetimes", "suffix"),
    [
        ("csv_suite", False, ".csv"),  # the training file itself
        ("csv_suite", True, ".parquet"),  # the same dates, as datetimes
        ("parquet_suite", True, ".parquet"),
        ("parquet_suite", True, ".csv"),  # the Parquet table exported by pandas
    ],
)
def test_the_training_table_passes_from_csv_and_parquet(
    request, folder, suite_name, as_datetimes, suffix
):
    suite = request.getfixturevalue(suite_name)
    table = typed(weird_table()) if as_datetimes else weird_table()
    batch = written(table, folder / f"train-{suite_name}{suffix}")

    report = validate_frame(batch, suite)

    assert report.success, describe_failures(report)


def _batch(**columns) -> pd.DataFrame:
    return weird_table().drop(columns="target").head(100).assign(**columns)


def _day_first(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values).dt.strftime("%d/%m/%Y %H:%M")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"when": "not a date"}, "expected dates written as '%Y-%m-%dT%H:%M:%S'"),
        ({"when_tz": "2024-13-45T00:00:00+00:00"}, "expected dates written as"),
        ({"when": "1900-01-01T00:00:00"}, "expected dates between 2019-01-"),
        ({"when_tz": "2099-12-31T00:00:00+00:00"}, "and 2029-12-"),
    ],
)
def test_broken_dates_fail_naming_the_column(folder, csv_suite, change, expected):
    batch = written(_batch(**change), folder / "broken.csv")

    report = validate_frame(batch, csv_suite, require_target=False)

    assert not report.success
    column = next(iter(change))
    lines = [line for line in describe_failures(report) if f"column {column!r}" in line]
    assert any(expected in line for line in lines), describe_failures(report)


def test_dates_written_day_first_fail(folder, csv_suite):
    clean = _batch()
    batch = written(_batch(when=_day_first(clean["when"])), folder / "day_first.csv")

    report = validate_frame(batch, csv_suite, require_target=False)

    assert not report.success
    assert [failure.column for failure in report.failures] == ["when"]
    assert report.failures[0].unexpected_percent == 100.0


def test_a_parquet_project_checks_text_batches_too(folder, parquet_suite):
    clean = written(typed(_batch()), folder / "typed_batch.csv")
    assert validate_frame(clean, parquet_suite, require_target=False).success

    garbage = written(clean.assign(when="not a date"), folder / "garbage_for_parquet.csv")
    report = validate_frame(garbage, parquet_suite, require_target=False)
    assert [failure.column for failure in report.failures] == ["when"]


def test_date_only_text_keeps_its_format_through_the_retraining_join():
    """Logged dates (naive UTC datetimes) joined to a reference that holds date text must pass
    the reference's format check, or every retraining of the project would be quarantined."""
    reference = weird_table().assign(when=lambda frame: frame["when"].str[:10])
    suite = suggest_suite(reference, config_for(reference))
    logged = typed(weird_table(seed=1)).assign(
        when=lambda frame: frame["when"].dt.normalize(),
        when_tz=lambda frame: frame["when_tz"].dt.tz_convert("UTC").dt.tz_localize(None),
    )

    joined = pd.concat([reference, align_dtypes(logged, reference)], ignore_index=True)

    report = validate_frame(joined, suite)
    assert report.success, describe_failures(report)


def test_suites_without_date_checks_still_validate(csv_suite):
    """Suites written before date checks existed: only presence and nulls, as before."""
    older = {
        **csv_suite,
        "expectations": [
            expectation
            for expectation in csv_suite["expectations"]
            if expectation["type"] not in {"expect_column_values_to_match_strftime_format"}
            and not (expectation.get("meta") or {}).get("loopml", {}).get("reads_as")
        ],
    }
    assert validate_frame(weird_table(), older).success
    assert validate_frame(_batch(when="not a date"), older, require_target=False).success
