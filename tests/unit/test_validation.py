"""The suggested suite and Great Expectations validation, run for real on the Telco sample."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import great_expectations as gx
import numpy as np
import pandas as pd
import pytest

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.data import file_hash, frame_hash
from loopml.errors import ConfigError
from loopml.profiling import infer_profile, suggest_suite, suite_hash
from loopml.validation import (
    describe_failures,
    guard_expectations,
    load_suite,
    quarantine_batch,
    validate_frame,
)


def _config(name: str, frame: pd.DataFrame, target: str, **options) -> ProjectConfig:
    profile = infer_profile(frame, target, **options)
    return ProjectConfig(
        name=name,
        data=f"{name}.csv",
        target=target,
        task=profile.task,
        positive_label=profile.positive_label,
        classes=profile.classes,
        id_column=options.get("id_column"),
        columns=ColumnsConfig(
            numeric=profile.numeric, categorical=profile.categorical, excluded=profile.excluded
        ),
    )


@pytest.fixture(scope="module")
def telco_suite(telco_frame) -> dict:
    return suggest_suite(telco_frame, _config("telco", telco_frame, "churn"))


@pytest.fixture(scope="module")
def telco_csv_sample(telco_frame, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batches") / "sample.csv"
    telco_frame.sample(500, random_state=7).to_csv(path, index=False)
    return path


def _failed_columns(report) -> set[tuple[str | None, str]]:
    return {(failure.column, failure.expectation_type) for failure in report.failures}


def test_suggested_suite_loads_in_gx_and_tags_every_expectation(telco_suite):
    suite = gx.ExpectationSuite(**json.loads(json.dumps(telco_suite)))

    assert suite.name == "telco"
    assert len(suite.expectations) == len(telco_suite["expectations"])
    roles = {e["meta"]["loopml"]["role"] for e in telco_suite["expectations"]}
    assert roles == {"feature", "target"}
    types = {(e["type"], e["kwargs"]["column"]) for e in telco_suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "contract") in types
    assert ("expect_column_values_to_be_between", "tenure") in types
    assert ("expect_column_values_to_be_in_type_list", "monthly_charges") in types
    assert ("expect_column_values_to_not_be_null", "total_charges") in types
    assert ("expect_column_values_to_be_in_set", "churn") in types
    assert suite_hash(suite.to_json_dict()) == suite_hash(telco_suite)


def test_suite_passes_on_its_reference_data(telco_frame, telco_suite):
    before = frame_hash(telco_frame)

    report = validate_frame(telco_frame, telco_suite)

    assert report.success, describe_failures(report)
    evaluated = [*telco_suite["expectations"], *guard_expectations(telco_suite)]
    assert report.evaluated == report.successful == len(evaluated)
    assert report.failures == []
    assert report.raw["success"] is True
    assert frame_hash(telco_frame) == before  # validation never changes the batch


def test_suite_passes_on_a_csv_round_trip_sample(telco_suite, telco_csv_sample, capfd):
    report = validate_frame(pd.read_csv(telco_csv_sample), telco_suite)

    assert report.success, describe_failures(report)
    printed = capfd.readouterr()
    assert (printed.out, printed.err) == ("", "")  # no progress bars, no log noise


def test_scoring_batch_without_target(telco_frame, telco_suite):
    scoring_batch = telco_frame.drop(columns=["churn"]).head(300)

    without_target = validate_frame(scoring_batch, telco_suite, require_target=False)
    with_target = validate_frame(scoring_batch, telco_suite)

    assert without_target.success, describe_failures(without_target)
    evaluated = [*telco_suite["expectations"], *guard_expectations(telco_suite)]
    target_count = sum(e["meta"]["loopml"]["role"] == "target" for e in evaluated)
    assert without_target.evaluated == len(evaluated) - target_count
    assert not with_target.success
    assert _failed_columns(with_target) == {("churn", "expect_column_to_exist")}
    assert describe_failures(with_target) == ["target column 'churn': missing from the batch"]


def _with_strings(frame: pd.DataFrame) -> pd.DataFrame:
    batch = frame.copy()
    batch["monthly_charges"] = batch["monthly_charges"].astype(object)
    batch.loc[batch.index[:3], "monthly_charges"] = ["n/a", "unknown", "??"]
    return batch


def _unseen_categories(frame: pd.DataFrame) -> pd.DataFrame:
    batch = frame.copy()
    batch.loc[batch.index[:60], "payment_method"] = "Crypto"
    return batch


@pytest.mark.parametrize(
    ("corrupt", "column", "expectation_type", "message_part"),
    [
        pytest.param(
            lambda frame: frame.drop(columns=["tenure"]),
            "tenure",
            "expect_column_to_exist",
            "column 'tenure': missing from the batch",
            id="missing-column",
        ),
        pytest.param(
            _with_strings,
            "monthly_charges",
            "expect_column_values_to_be_in_type_list",
            "column 'monthly_charges': expected numeric values",
            id="strings-in-numeric-column",
        ),
        pytest.param(
            lambda frame: frame.assign(tenure=frame["tenure"] * 100),
            "tenure",
            "expect_column_values_to_be_between",
            "column 'tenure': expected values between 0 and 108",
            id="far-out-of-range",
        ),
        pytest.param(
            lambda frame: frame.assign(contract=np.nan),
            "contract",
            "expect_column_values_to_not_be_null",
            "column 'contract': expected values not null for at least 98% of rows; 500 null values",
            id="all-null-column",
        ),
        pytest.param(
            _unseen_categories,
            "payment_method",
            "expect_column_values_to_be_in_set",
            "60 unexpected values (12.0%), e.g. 'Crypto'",
            id="unseen-categories",
        ),
    ],
)
def test_suite_fails_on_broken_batches(
    telco_suite, telco_csv_sample, tmp_path, corrupt, column, expectation_type, message_part
):
    # Corrupt a CSV file and read it back, as a batch would arrive.
    path = tmp_path / "batch.csv"
    corrupt(pd.read_csv(telco_csv_sample)).to_csv(path, index=False)

    report = validate_frame(pd.read_csv(path), telco_suite)

    assert not report.success
    assert _failed_columns(report) == {(column, expectation_type)}
    lines = describe_failures(report)
    assert len(lines) == 1
    assert message_part in lines[0]


def test_a_few_unseen_categories_are_tolerated(telco_frame, telco_suite):
    batch = telco_frame.copy()
    batch.loc[batch.index[:5], "payment_method"] = "Crypto"  # 5 of 7,043 rows

    assert validate_frame(batch, telco_suite).success


def test_numbers_stored_as_text_are_coerced_before_validation(telco_frame, tmp_path):
    raw = telco_frame.assign(
        total_charges=telco_frame["total_charges"].map(lambda v: " " if pd.isna(v) else f"{v}")
    )
    suite = suggest_suite(raw, _config("telco_text", raw, "churn"))

    assert suite["meta"]["loopml"]["coerce_numeric"] == ["total_charges"]
    assert validate_frame(raw, suite).success
    garbage = raw.assign(total_charges="unknown")
    assert _failed_columns(validate_frame(garbage, suite)) == {
        ("total_charges", "expect_column_values_to_not_be_null")
    }


def test_regression_table():
    generator = np.random.default_rng(3)
    rows = 400
    frame = pd.DataFrame(
        {
            "area": generator.uniform(30, 250, rows),
            "rooms": generator.integers(1, 8, rows),
            "district": generator.choice(["north", "south", "east", "west"], rows),
            "house_id": [f"H{index}" for index in range(rows)],
        }
    )
    frame["price"] = frame["area"] * 3_000 + generator.normal(0, 20_000, rows)
    config = _config("houses", frame, "price", id_column="house_id")
    suite = suggest_suite(frame, config)

    assert config.task == "regression"
    assert validate_frame(frame, suite).success
    assert validate_frame(frame.drop(columns=["price"]), suite, require_target=False).success
    broken = frame.assign(price="expensive", house_id=None).drop(columns=["house_id"])
    assert _failed_columns(validate_frame(broken, suite)) == {
        ("house_id", "expect_column_to_exist"),
        ("price", "expect_column_values_to_be_in_type_list"),
    }


def test_multiclass_table():
    generator = np.random.default_rng(4)
    rows = 300
    frame = pd.DataFrame(
        {
            "petal": generator.uniform(1, 7, rows),
            "colour": generator.choice(["blue", "white"], rows),
            "species": generator.choice(["setosa", "versicolor", "virginica"], rows),
        }
    )
    suite = suggest_suite(frame, _config("iris", frame, "species"))

    assert validate_frame(frame, suite).success
    new_class = frame.assign(species="unknown")
    assert _failed_columns(validate_frame(new_class, suite)) == {
        ("species", "expect_column_values_to_be_in_set")
    }


def test_data_docs_are_written(telco_frame, telco_suite, tmp_path):
    docs_dir = tmp_path / "docs"

    report = validate_frame(telco_frame.head(200), telco_suite, data_docs_dir=docs_dir)

    assert report.data_docs_path == docs_dir / "index.html"
    assert report.data_docs_path.is_file()
    pages = list((docs_dir / "validations").rglob("*.html"))
    assert pages, "no validation page in the Data Docs site"
    assert "tenure" in pages[0].read_text()


class _AssetReferences(HTMLParser):
    """The files a page loads: stylesheets, scripts and images."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "link" and "stylesheet" in (attributes.get("rel") or ""):
            self.references.append(attributes.get("href") or "")
        elif tag in ("script", "img") and attributes.get("src"):
            self.references.append(attributes["src"])


def test_data_docs_open_offline(telco_frame, telco_suite, tmp_path):
    docs_dir = tmp_path / "docs"

    # Two validations into one site: the second finds the assets in place and still rewrites.
    validate_frame(telco_frame.head(200), telco_suite, data_docs_dir=docs_dir)
    validate_frame(telco_frame.tail(200), telco_suite, data_docs_dir=docs_dir)

    pages = sorted(docs_dir.rglob("*.html"))
    assert docs_dir / "index.html" in pages
    assert list((docs_dir / "validations").rglob("*.html"))
    for page in pages:
        parser = _AssetReferences()
        parser.feed(page.read_text(encoding="utf-8"))
        stylesheets = [ref for ref in parser.references if ref.endswith(".css")]
        assert stylesheets, f"{page.name} loads no stylesheet"
        assert any("bootstrap" in ref for ref in stylesheets)
        for reference in parser.references:
            assert not reference.startswith(("http://", "https://", "//")), (page, reference)
            assert (page.parent / reference).resolve().is_file(), (page, reference)
    # Font Awesome's fonts come along with its stylesheet.
    fonts = list(docs_dir.rglob("fa-solid-900.woff2"))
    assert fonts


def test_quarantine_copies_the_file_and_leaves_the_source(telco_suite, telco_csv_sample, tmp_path):
    source = tmp_path / "incoming" / "batch-7.csv"
    source.parent.mkdir()
    pd.read_csv(telco_csv_sample).drop(columns=["tenure"]).to_csv(source, index=False)
    source_hash, source_mtime = file_hash(source), source.stat().st_mtime
    report = validate_frame(pd.read_csv(source), telco_suite)

    folder = quarantine_batch(source, report, tmp_path / "quarantine", "batch-7")

    assert folder == tmp_path / "quarantine" / "batch-7"
    assert file_hash(folder / "batch-7.csv") == source_hash
    assert source.is_file() and file_hash(source) == source_hash
    assert source.stat().st_mtime == source_mtime
    record = json.loads((folder / "validation.json").read_text())
    assert record["success"] is False
    assert record["messages"] == ["column 'tenure': missing from the batch"]
    assert record["result"]["statistics"]["unsuccessful_expectations"] >= 1


def test_quarantine_writes_a_frame_as_parquet(telco_frame, telco_suite, tmp_path):
    batch = telco_frame.head(50).assign(contract="Weekly")
    report = validate_frame(batch, telco_suite)

    folder = quarantine_batch(batch, report, tmp_path, "frame-batch")

    assert frame_hash(pd.read_parquet(folder / "batch.parquet")) == frame_hash(batch)
    assert (folder / "validation.json").is_file()


def test_load_suite(telco_suite, tmp_path):
    path = tmp_path / "telco.json"
    path.write_text(json.dumps(telco_suite))

    assert load_suite(path) == telco_suite


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no expectation suite there"),
        ("{not json", "is not valid JSON"),
        ('{"name": "x"}', "is not an expectation suite"),
        (
            '{"name": "x", "expectations": [{"type": "expect_nothing_at_all", "kwargs": {}}]}',
            "is not a valid expectation suite",
        ),
    ],
)
def test_load_suite_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "suite.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ConfigError, match=message):
        load_suite(path)
