"""One label rule: when two class labels are the same label (training, scoring, monitoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml.errors import DataError
from loopml.label_rule import find_label, is_label, label_index, label_key, same_label


@pytest.mark.parametrize(
    ("left", "right", "same"),
    [
        ("Yes", "yes", True),  # text ignores case ...
        (" Yes ", "YES", True),  # ... and surrounding blanks
        ("Yes", "Ye s", False),
        (1, "1", True),  # numbers compare by value, whatever their type
        (1, 1.0, True),
        ("1", "1.0", True),
        (np.int64(1), np.float64(1.0), True),
        (0.5, "0.5", True),
        (1, 2, False),
        (True, "True", True),  # booleans match their text in any case
        (True, "true", True),
        (np.bool_(False), "FALSE", True),
        (True, 1, False),  # a 0/1 column is numbers, not a flag
        (False, 0, False),
        (None, None, False),  # missing values are no label
        (float("nan"), "nan", False),
    ],
)
def test_same_label(left, right, same):
    assert same_label(left, right) is same
    assert same_label(right, left) is same


def test_label_keys_of_columns_follow_the_rule_for_every_dtype():
    assert list(is_label(np.array(["Yes", "no", " YES"]), "yes")) == [True, False, True]
    assert list(is_label(np.array([1.0, 0.0, np.nan]), 1)) == [True, False, False]
    assert list(is_label(pd.Series(["1", "0", None], dtype=object), 1)) == [True, False, False]
    assert list(is_label(np.array([True, False]), "True")) == [True, False]
    # An object column holding True and 1 keeps them apart (hashing would merge them).
    assert list(is_label(np.array([True, 1, "1"], dtype=object), 1)) == [False, True, True]
    assert is_label(np.array([], dtype=object), "Yes").shape == (0,)


def test_an_identical_class_wins_over_an_equivalent_one():
    assert label_index(["yes", "Yes"], "Yes") == 1
    assert label_index(np.array(["0", "1"], dtype=object), 1) == 1
    assert label_index(np.array([False, True]), "True") == 1
    assert label_index(np.array([0.0, 1.0]), 0) == 0
    assert find_label(["No", "Yes"], "yes") == "Yes"
    assert find_label([0, 1], True) is None
    with pytest.raises(DataError, match="'Maybe' is not among"):
        label_index(["No", "Yes"], "Maybe")


def test_keys_are_canonical_text():
    assert label_key(np.int64(3)) == label_key(3.0) == label_key("3.0") == "3"
    assert label_key("Churned ") == "churned"
    assert label_key(pd.NA) is None and label_key(np.nan) is None


@pytest.mark.parametrize(
    "values",
    [
        ["Yes", "No", None, " yes", "YES"],
        [True, False, None, True],
        [1, 2, np.int64(1), None],
        [1.0, 2.5, np.nan, 1],
        [True, 1, 1.0, "1", None],
        [False, 0, "0", 0.0],
        ["1", 1, np.float64(1.0)],
        [None, None],
    ],
)
def test_object_columns_keyed_per_distinct_value_equal_the_rule_per_value(values):
    """Object columns of one kind are keyed through their distinct values (fast); the keys are
    still exactly the rule's, value by value, whatever the column mixes."""
    from loopml.label_rule import label_key, label_keys

    column = pd.Series(values, dtype=object)
    assert list(label_keys(column)) == [label_key(value) for value in values]
