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
