"""Reading tables at the edge: delimited text of every common flavour, whole and in chunks."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest

from loopml.data import csv_separator, iter_table_chunks, read_table
from loopml.errors import DataError

TABLE = pd.DataFrame(
    {
        "amount, in EUR": [1.5, 2.25, 3.0, 4.75],
        "plan": ["basic", "plus", "basic", "pro"],
        "note": ["a;b", "c|d", "e", "f,g"],
        "churn": ["Yes", "No", "No", "Yes"],
    }
)


@pytest.mark.parametrize(
    ("file_name", "separator"),
    [
        ("table.csv", ","),
        ("european.csv", ";"),
        ("export.txt", "|"),
        ("table.tsv", "\t"),
        ("tabs.csv", "\t"),
    ],
)
def test_delimited_text_is_read_with_its_own_separator(tmp_path, file_name, separator):
    path = tmp_path / file_name
    TABLE.to_csv(path, sep=separator, index=False)

    assert csv_separator(path) == separator
    pd.testing.assert_frame_equal(read_table(path), TABLE)
    chunks = list(iter_table_chunks(path, chunk_rows=3))
    assert [len(chunk) for chunk in chunks] == [3, 1]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), TABLE)


def test_a_gzipped_semicolon_file_is_sniffed_through_the_compression(tmp_path):
    path = tmp_path / "table.csv.gz"
    with gzip.open(path, "wt") as handle:
        TABLE.to_csv(handle, sep=";", index=False)

    assert csv_separator(path) == ";"
    pd.testing.assert_frame_equal(read_table(path), TABLE)


def test_a_single_column_file_reads_as_one_column(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("x\n1\n2\n3\n")

    assert csv_separator(path) == ","
    assert read_table(path)["x"].tolist() == [1, 2, 3]


def test_a_header_only_file_has_no_rows(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("x;y\n")

    with pytest.raises(DataError, match="no rows"):
        read_table(path)


# --------------------------------------------------------------------------- SQL sources


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    import sqlite3

    database = tmp_path / "warehouse.db"
    with sqlite3.connect(database) as connection:
        TABLE.to_sql("customers", connection, index=False)
    return f"sqlite:///{database}"


def test_a_sql_query_is_read_through_sqlalchemy(sqlite_url):
    frame = read_table("SELECT plan, churn FROM customers WHERE plan != 'pro'", sql_url=sqlite_url)

    assert list(frame.columns) == ["plan", "churn"]
    assert frame["plan"].tolist() == ["basic", "plus", "basic"]


def test_the_database_url_reads_variables_from_the_environment(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_DIR", str(tmp_path))

    frame = read_table("SELECT * FROM customers", sql_url="sqlite:///${WAREHOUSE_DIR}/warehouse.db")

    assert len(frame) == len(TABLE)


def test_an_unset_variable_in_the_database_url_is_named(monkeypatch):
    monkeypatch.delenv("LOANS_DB_PASSWORD", raising=False)

    with pytest.raises(DataError, match="LOANS_DB_PASSWORD, which is unset"):
        read_table("SELECT 1", sql_url="postgresql://app:${LOANS_DB_PASSWORD}@127.0.0.1/loans")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT * FROM customers WHERE plan = 'none'", "returned no rows"),
        ("SELECT * FROM no_such_table", "SQL query failed"),
    ],
)
def test_a_sql_query_that_gives_no_table_is_one_clear_error(sqlite_url, query, message):
    with pytest.raises(DataError, match=message):
        read_table(query, sql_url=sqlite_url)


@pytest.mark.parametrize(
    ("url", "literal"),
    [
        ("postgresql://app:s3cret@db/loans", True),
        ("postgresql://app:${LOANS_DB_PASSWORD}@db/loans", False),
        ("postgresql://app@db/loans", False),
        ("sqlite:////data/loans.db", False),
    ],
)
def test_init_warns_about_a_password_spelled_out_in_the_url(url, literal):
    from loopml.project import _has_literal_password

    assert _has_literal_password(url) is literal


@pytest.mark.parametrize("file_name", ["reference.parquet", "reference.csv"])
def test_a_reference_read_lean_profiles_exactly_as_read_whole(tmp_path, file_name):
    """Only the compared columns, text as categories: the same drift profile as the whole
    table prepared as usual (an int flag and a text column with a null included)."""
    from loopml.drift.profile import build_reference_profile
    from loopml.features import prepare_features

    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.25, None, 4.75, 1.5, 9.0],
            "flag": [0, 1, 1, 0, 1, 1],
            "plan": ["basic", "plus", None, "pro", "basic", "plus"],
            "unused": ["x"] * 6,
            "churn": ["Yes", "No", "No", "Yes", "No", "No"],
        }
    )
    path = tmp_path / file_name
    frame.to_parquet(path) if file_name.endswith(".parquet") else frame.to_csv(path, index=False)
    config = _churn_config("lean", numeric=["amount"], categorical=["flag", "plan"])
    numeric, categorical = config.columns.numeric, config.columns.categorical

    lean = read_table(path, columns=[*config.columns.features, config.target])
    prepared_whole = prepare_features(read_table(path), config)
    whole = build_reference_profile(prepared_whole, numeric, categorical)

    assert "unused" not in lean.columns and lean["plan"].dtype == "category"
    compact = prepare_features(lean, config, compact=True)
    assert compact["flag"].dtype == "category"
    profile = build_reference_profile(compact, numeric, categorical)
    assert profile.to_dict()["numeric"] == whole.to_dict()["numeric"]
    for column in categorical:
        assert profile.categorical[column].counts == whole.categorical[column].counts
        assert profile.categorical[column].n_null == whole.categorical[column].n_null


def test_a_parquet_batch_read_with_text_as_categories_prepares_as_read_as_text(tmp_path):
    """The drift pass reads a Parquet batch's text as categories (its dictionary pages, no
    Python string per cell); prepared for the model, each chunk is the same as read as text,
    nulls included, and the chunk's categories count as its text does."""
    from loopml.drift.profile import category_counts
    from loopml.features import prepare_features

    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.25, None, 4.75, 1.5, 9.0, 3.0],
            "plan": ["basic", "plus", None, "pro", "basic", "plus", "basic"],
            "code": ["1", "2", "2", None, "1", "1", "3"],
            "churn": ["Yes", "No", "No", "Yes", "No", "No", "Yes"],
        }
    )
    path = tmp_path / "batch.parquet"
    frame.to_parquet(path)
    config = _churn_config("chunks", numeric=["amount"], categorical=["plan", "code"])

    as_text = list(iter_table_chunks(path, chunk_rows=4))
    as_categories = list(iter_table_chunks(path, chunk_rows=4, text_as_categories=True))

    assert [len(chunk) for chunk in as_categories] == [4, 3]
    for text_chunk, category_chunk in zip(as_text, as_categories, strict=True):
        assert category_chunk["plan"].dtype == "category"
        assert category_chunk["amount"].dtype == text_chunk["amount"].dtype
        prepared = prepare_features(category_chunk, config)
        expected = prepare_features(text_chunk, config)
        assert prepared["plan"].dtype == expected["plan"].dtype == object
        assert prepared["plan"].isna().tolist() == expected["plan"].isna().tolist()
        pd.testing.assert_frame_equal(prepared.fillna("-"), expected.fillna("-"))
        compact = prepare_features(category_chunk, config, compact=True)
        for column in config.columns.categorical:
            assert category_counts(compact[column]) == category_counts(expected[column])


def test_text_columns_are_prepared_as_text_whatever_they_hold():
    """Text passes through as it is (a missing value stays missing); anything else becomes
    its text, as before the fast path for columns already of text."""
    from loopml.config import ProjectConfig
    from loopml.features import prepare_features

    config = ProjectConfig(
        name="text",
        data="memory",
        target="y",
        task="classification",
        positive_label=1,
        columns={"numeric": [], "categorical": ["text", "mixed", "flag"]},
    )
    frame = pd.DataFrame(
        {
            "text": ["a", None, "b"],
            "mixed": ["a", 1, None],
            "flag": pd.Series([True, False, True]).astype("category"),
        }
    )

    prepared = prepare_features(frame, config)

    assert prepared["text"].tolist() == ["a", None, "b"]
    assert prepared["mixed"].tolist() == ["a", "1", None]
    assert prepared["flag"].tolist() == ["True", "False", "True"]
    assert all(prepared[column].dtype == object for column in prepared.columns)


def _churn_config(name: str, *, numeric: list[str], categorical: list[str]):
    """A binary "churn" (Yes/No) project over the given columns."""
    from loopml.config import ProjectConfig

    return ProjectConfig(
        name=name,
        data="memory",
        target="churn",
        task="classification",
        positive_label="Yes",
        columns={"numeric": numeric, "categorical": categorical},
    )


def test_a_parquet_file_of_one_row_group_is_streamed_not_read_whole(tmp_path):
    """A row group's column chunks are read in small pieces as its batches are decoded: a file
    written as one row group costs a batch's memory, not the file's (pyarrow's own pool, in a
    fresh process, measures it)."""
    import subprocess
    import sys

    import numpy as np

    path = tmp_path / "one_row_group.parquet"
    rows = 1_000_000
    frame = pd.DataFrame({f"x{i}": np.random.default_rng(i).normal(size=rows) for i in range(5)})
    frame.to_parquet(path, row_group_size=rows)  # 40 MB of doubles in one row group
    script = (
        "import sys, pyarrow as pa\n"
        "from loopml.data import iter_table_chunks\n"
        "seen = sum(len(chunk) for chunk in iter_table_chunks(sys.argv[1], chunk_rows=10_000))\n"
        "print(seen, pa.default_memory_pool().max_memory())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    seen, peak_bytes = (int(value) for value in result.stdout.split())

    assert seen == rows
    # Measured: 17 MB whatever the file's size (0.5M-2M rows); read whole, 53 MB.
    assert peak_bytes < 25 * 2**20, f"pyarrow held {peak_bytes / 2**20:.0f} MB for 10k-row batches"


def test_a_corrupt_parquet_file_read_in_chunks_is_named_in_one_line(tmp_path):
    path = tmp_path / "batch.parquet"
    TABLE.to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])  # cut off, as by a copy that died

    with pytest.raises(DataError, match=r"batch\.parquet: cannot be read as PARQUET: "):
        list(iter_table_chunks(path, chunk_rows=2))
