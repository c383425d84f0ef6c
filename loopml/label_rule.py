"""When two class labels are the same label: one rule for training, scoring, monitoring, init.

A label reaches loopml from YAML (``positive_label: 1``), from a CSV read (``1``, ``"Yes"``),
from Parquet or the prediction log (``"1"``, ``1.0``) and from a model's ``classes_``
(``np.int64(1)``, ``np.str_("Yes")``). Every place that compares labels calls this module, so
training can never accept a positive label that scoring or monitoring would reject.

The rule (:func:`label_key` gives each value its canonical text; equal texts are one label):

- Missing values (``None``, ``NaN``, ``pd.NA``) are no label and match nothing.
- Booleans are ``"true"``/``"false"``; the texts ``"true"``/``"false"`` in any case match them,
  ``1``/``0`` do not (a 0/1 column is a number column, not a flag).
- Numbers compare by value: ``1``, ``1.0``, ``"1"``, ``"1.0"`` and ``np.int64(1)`` are one label;
  ``0.5`` and ``"0.5"`` are one label.
- Text ignores surrounding blanks and letter case: ``"Yes"``, ``"yes"`` and ``" YES "`` are one
  label (a YAML ``positive_label: yes`` finds the class ``"Yes"``).
- Exact matches win: :func:`label_index` prefers an identical class to an equivalent one.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loopml.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_BOOLEAN_TEXT = frozenset({"true", "false"})


def label_key(value: Any) -> str | None:
    """The canonical text of a label (see the module docstring); ``None`` for a missing value."""
    if value is None or value is _missing():
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _number_key(float(value))
    text = str(value).strip()
    lowered = text.lower()
    if lowered in _BOOLEAN_TEXT:
        return lowered
    if _NUMBER_TEXT.fullmatch(text):
        return _number_key(float(text))
    return lowered


def _missing() -> object:
    """``pd.NA``, without importing pandas for a caller that never meets one (pandas, loaded
    when a value could be ``pd.NA``, is already imported then)."""
    pandas = sys.modules.get("pandas")
    return pandas.NA if pandas is not None else _NOT_PANDAS


_NOT_PANDAS = object()


def _number_key(number: float) -> str | None:
    if math.isnan(number):
        return None
    return str(int(number)) if number.is_integer() else repr(number)


def same_label(left: Any, right: Any) -> bool:
    """Whether two values are the same label (two missing values are not)."""
    key = label_key(left)
    return key is not None and key == label_key(right)


def label_keys(values: Sequence[Any] | np.ndarray | pd.Series) -> np.ndarray:
    """:func:`label_key` of every value, as an object array (``None`` where missing).

    Typed columns are keyed once per distinct value; object columns value by value.
    """
    import pandas as pd

    series = values.reset_index(drop=True) if isinstance(values, pd.Series) else pd.Series(values)
    missing = series.isna().to_numpy()
    if series.dtype == object and not _hash_safe(series):
        # Per value: hashing a mixed object column would merge True with 1 before the rule
        # sees them. Columns of one kind (all text, say) are keyed per distinct value below.
        keys = np.array([label_key(value) for value in series], dtype=object)
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        lookup = np.array([*(label_key(value) for value in uniques), None], dtype=object)
        keys = lookup[codes]
    keys[missing] = None
    return keys


def _hash_safe(series: pd.Series) -> bool:
    """Whether equal hashes mean equal keys in this object column: all its values are of one
    kind (text, bools, integers, floats), so no True meets a 1 (``infer_dtype`` runs in C)."""
    import pandas as pd

    return pd.api.types.infer_dtype(series, skipna=True) in _ONE_KIND


_ONE_KIND = frozenset({"string", "boolean", "integer", "floating", "empty"})


def is_label(values: Sequence[Any] | np.ndarray | pd.Series, label: Any) -> np.ndarray:
    """Which values are ``label`` (a boolean array)."""
    wanted = label_key(label)
    if wanted is None:
        return np.zeros(len(values), dtype=bool)
    return label_keys(values) == wanted


def find_label(classes: Sequence[Any], label: Any) -> Any | None:
    """The class that is ``label`` (an identical one first), or ``None``."""
    position = _position(list(classes), label)
    return None if position is None else list(classes)[position]


def label_index(classes: Sequence[Any], label: Any) -> int:
    """Where ``label`` sits among ``classes`` (a model's ``classes_``, a target's values).

    Raises:
        DataError: no class is ``label``.
    """
    classes = list(classes)
    position = _position(classes, label)
    if position is None:
        raise DataError(f"the label {label!r} is not among the target's classes {classes!r}")
    return position


def _position(classes: list[Any], label: Any) -> int | None:
    for index, value in enumerate(classes):
        if type(value) is type(label) and value == label:
            return index
    wanted = label_key(label)
    if wanted is None:
        return None
    for index, value in enumerate(classes):
        if label_key(value) == wanted:
            return index
    return None
