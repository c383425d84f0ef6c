"""Validating a batch against its expectation suite with Great Expectations, and quarantining it.

Each call builds a fresh ephemeral GX context (a few milliseconds; nothing persists between calls
and nothing is global): a pandas datasource with a dataframe asset and a whole-dataframe batch
definition, the suite, and a ValidationDefinition — or, when Data Docs are wanted, a Checkpoint
whose ``UpdateDataDocsAction`` writes the HTML site into the given folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from loopml.data import write_parquet
from loopml.data_docs import localize_data_docs
from loopml.errors import ConfigError
from loopml.features import as_datetime
from loopml.profiling import NUMERIC_TYPE_LIST, coerce_numeric, dates_as_text

SUITE_KEYS = {"name", "expectations"}
DATA_DOCS_SITE = "loopml"
MAX_EXAMPLES = 5
# BASIC gives counts, percentages and a short list of unexpected values. SUMMARY and COMPLETE add
# value counts and row indices of unexpected values, which cost seconds on large failing batches.
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 20}


@dataclass
class ExpectationFailure:
    """One failed expectation, in words a user can act on.

    Attributes:
        column: the column checked (``None`` for table-level expectations).
        expectation_type: the GX type, e.g. ``expect_column_values_to_be_between``.
        expected: short text, e.g. ``"between 0 and 120"``.
        unexpected_count: rows that broke it (``None`` when not row-based).
        unexpected_percent: their share of the rows, in percent.
        examples: up to five unexpected values.
        observed_value: what GX observed for aggregate expectations (e.g. a dtype).
        role: ``feature``, ``target``, ``id`` or ``table`` (from the expectation's meta).
        error: GX's message when the expectation could not be evaluated.
    """

    column: str | None
    expectation_type: str
    expected: str
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    observed_value: Any = None
    role: str | None = None
    error: str | None = None


@dataclass
class ValidationReport:
    """The outcome of validating one batch.

    Attributes:
        success: every evaluated expectation passed.
        evaluated: expectations evaluated.
        successful: expectations that passed.
        failures: the failed ones (an expectation on a missing column is not listed again: the
            column's ``expect_column_to_exist`` failure says it).
        raw: GX's validation result, ``to_json_dict()``.
        data_docs_path: the Data Docs ``index.html``, when built.
    """

    success: bool
    evaluated: int
    successful: int
    failures: list[ExpectationFailure]
    raw: dict
    data_docs_path: Path | None = None

    def summary(self) -> dict:
        """A JSON-friendly summary (no GX raw result)."""
        return {
            "success": self.success,
            "evaluated": self.evaluated,
            "successful": self.successful,
            "failures": [_json_safe(asdict(failure)) for failure in self.failures],
            "messages": describe_failures(self),
            "data_docs_path": str(self.data_docs_path) if self.data_docs_path else None,
        }


def load_suite(path: str | Path) -> dict:
    """Read a suite JSON file (as written by ``loopml init``).

    Raises:
        ConfigError: the file is missing, not JSON, or not an expectation suite.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no expectation suite there (create one with 'loopml init')")
    try:
        text = path.read_text()
        suite_json = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(suite_json, dict) or not set(suite_json) >= SUITE_KEYS:
        raise ConfigError(
            f"{path} is not an expectation suite (it needs 'name' and 'expectations')"
        )
    if not isinstance(suite_json["expectations"], list):
        raise ConfigError(f"{path}: 'expectations' must be a list")
    if text not in _accepted_suites:  # a text GX accepted once is accepted again
        _build_suite(suite_json, source=str(path))  # fail now, with the file name, if GX rejects
        _accepted_suites.add(text)
    return suite_json


_accepted_suites: set[str] = set()


def validate_frame(
    frame: pd.DataFrame,
    suite_json: dict,
    *,
    require_target: bool = True,
    require_id: bool = True,
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate a batch with Great Expectations.

    Text columns the suite lists in ``meta["loopml"]["coerce_numeric"]`` are converted to numbers
    first (the reference table needed it too), so the numeric checks apply to them. A column with
    a strftime-format check that holds datetimes (Parquet, SQL) is written as text in that format
    first, and expectations marked ``meta["loopml"]["reads_as"] == "dates"`` (date ranges) run on
    the column's dates as the model reads them (:func:`loopml.features.as_datetime`).

    Args:
        frame: the batch, as read.
        suite_json: the suite (:func:`load_suite` or :func:`loopml.profiling.suggest_suite`).
        require_target: ``False`` for scoring batches: expectations whose meta role is
            ``target`` are left out.
        require_id: ``False`` to leave out expectations whose meta role is ``id``.
        data_docs_dir: when given, Data Docs HTML is written into this folder.

    Raises:
        ConfigError: GX rejects the suite.
    """
    skipped_roles = {
        role for role, keep in (("target", require_target), ("id", require_id)) if not keep
    }
    expectations = [
        expectation
        for expectation in [*suite_json.get("expectations", []), *guard_expectations(suite_json)]
        if _role(expectation) not in skipped_roles
    ]
    coerce = _loopml_meta(suite_json).get("coerce_numeric") or []
    if coerce:
        frame = coerce_numeric(frame, coerce)
    # A date column's format is checked on its text, its range on the dates the model reads
    # (GX compares date bounds with datetimes only): two batches of the same rows.
    as_dates = [expectation for expectation in expectations if _reads_dates(expectation)]
    as_written = [expectation for expectation in expectations if not _reads_dates(expectation)]
    formats = _date_formats(as_written)
    if formats:
        frame = frame.assign(
            **{
                column: dates_as_text(frame[column], date_format)
                for column, date_format in formats.items()
                if column in frame.columns
            }
        )
    batches = [("batch", frame, as_written)]
    if as_dates:
        date_columns = {(expectation.get("kwargs") or {}).get("column") for expectation in as_dates}
        dates = pd.DataFrame(
            {
                column: as_datetime(frame[column])
                for column in frame.columns
                if column in date_columns
            },
            index=frame.index,
        )
        batches.append(("dates", dates, as_dates))

    # GX filters the whole frame by each column's non-null mask for every column expectation;
    # without copy-on-write, pandas deep-copies (and consolidates) all columns each time, which
    # made 1M x 20 take 18 s instead of 5 s. Copy-on-write turns those copies into views.
    with _quiet(), pd.option_context("mode.copy_on_write", True):
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = _progress_bars_off()
        context.config.analytics_enabled = False
        datasource = context.data_sources.add_pandas("loopml")
        if data_docs_dir is not None:
            data_docs_dir = Path(data_docs_dir)
            data_docs_dir.mkdir(parents=True, exist_ok=True)
            context.add_data_docs_site(
                DATA_DOCS_SITE,
                {
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(data_docs_dir.resolve()),
                    },
                },
            )
        # A second early: a coarse file-system clock must not make this build's pages look old.
        build_started = time.time() - 1
        results = []
        for name, batch, batch_expectations in batches:
            batch_definition = datasource.add_dataframe_asset(
                name
            ).add_batch_definition_whole_dataframe("whole")
            suite_name = suite_json.get("name", "suite") + ("" if name == "batch" else f" ({name})")
            suite = context.suites.add(
                _build_suite({**suite_json, "name": suite_name, "expectations": batch_expectations})
            )
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(
                    name=f"loopml-validation-{name}", data=batch_definition, suite=suite
                )
            )
            if data_docs_dir is None:
                result = definition.run(
                    batch_parameters={"dataframe": batch}, result_format=RESULT_FORMAT
                )
            else:
                checkpoint = context.checkpoints.add(
                    gx.Checkpoint(
                        name=f"loopml-checkpoint-{name}",
                        validation_definitions=[definition],
                        actions=[
                            gx.checkpoint.UpdateDataDocsAction(
                                name="data_docs", site_names=[DATA_DOCS_SITE]
                            )
                        ],
                        result_format=RESULT_FORMAT,
                    )
                )
                checkpoint_result = checkpoint.run(batch_parameters={"dataframe": batch})
                result = next(iter(checkpoint_result.run_results.values()))
            results.append(_json_safe(result.to_json_dict()))
        docs_index = None
        if data_docs_dir is not None:
            localize_data_docs(data_docs_dir, since=build_started)  # open offline: no CDNs
            index = data_docs_dir / "index.html"
            docs_index = index if index.is_file() else None

    return _report(_merged(results), docs_index)


# Checks loopml adds to every suite at validation time (old suites included): each stops a batch
# that would pass a suggested suite and then crash training, scoring or monitoring.
GUARD_TEXT = {
    "rows": "at least one row",
    "finite": "finite numbers (inf and -inf cannot be scored or trained on)",
    "not_all_null": "at least one value that is not null",
}
_LARGEST_FLOAT = 1.7976931348623157e308


def guard_expectations(suite_json: dict) -> list[dict]:
    """Always-on expectations (JSON form): the batch has rows, no feature column is all null,
    and numeric columns hold finite numbers."""

    def guard(kind: str, role: str, column: str | None, type_: str, **kwargs: Any) -> dict:
        meta = {"loopml": {"role": role, "column": column, "guard": kind}}
        column_kwargs = {} if column is None else {"column": column}
        return {"type": type_, "kwargs": {**column_kwargs, **kwargs}, "meta": meta}

    coerce = set(_loopml_meta(suite_json).get("coerce_numeric") or [])
    expectations = suite_json.get("expectations", [])
    # A not-null check with a positive ``mostly`` already fails an all-null column.
    null_checked = {
        (expectation.get("kwargs") or {}).get("column")
        for expectation in expectations
        if expectation.get("type") == "expect_column_values_to_not_be_null"
        and float((expectation.get("kwargs") or {}).get("mostly") or 1.0) > 0
    }
    guards = [guard("rows", "table", None, "expect_table_row_count_to_be_between", min_value=1)]
    for expectation in expectations:
        kwargs = expectation.get("kwargs") or {}
        column, role, kind = kwargs.get("column"), _role(expectation), expectation.get("type")
        if column is None or role not in ("feature", "target"):
            continue
        if kind == "expect_column_to_exist" and role == "feature" and column not in null_checked:
            guards.append(
                guard(
                    "not_all_null",
                    role,
                    column,
                    "expect_column_unique_value_count_to_be_between",
                    min_value=1,
                )
            )
        numeric = kind == "expect_column_values_to_be_in_type_list" and set(
            kwargs.get("type_list") or []
        ) == set(NUMERIC_TYPE_LIST)
        if numeric or (kind == "expect_column_to_exist" and column in coerce):
            guards.append(
                guard(
                    "finite",
                    role,
                    column,
                    "expect_column_values_to_be_between",
                    min_value=-_LARGEST_FLOAT,
                    max_value=_LARGEST_FLOAT,
                )
            )
    return guards


def describe_failures(report: ValidationReport) -> list[str]:
    """One line per failed expectation: the column, what was expected, what was found."""
    return [_describe(failure) for failure in report.failures]


def quarantine_batch(
    source: Path | pd.DataFrame, report: ValidationReport, quarantine_dir: Path, batch_id: str
) -> Path:
    """Keep a failed batch and its validation result in ``quarantine_dir/batch_id/``.

    A file is copied byte for byte (the source is neither moved nor changed); a DataFrame is
    written as ``batch.parquet``. ``validation.json`` beside it holds the summary and GX's result.

    Args:
        source: the batch file, or the batch itself.
        report: its validation report.
        quarantine_dir: the quarantine root.
        batch_id: a folder name for this batch (no path separators).

    Returns:
        The batch's quarantine folder.
    """
    if not batch_id or batch_id in {".", ".."} or "/" in batch_id or "\\" in batch_id:
        raise ValueError(f"batch id {batch_id!r} must be a plain folder name")
    folder = Path(quarantine_dir) / batch_id
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, pd.DataFrame):
        write_parquet(source, folder / "batch.parquet")
        source_text = "DataFrame"
    else:
        source = Path(source)
        name = source.name if source.name != "validation.json" else f"batch-{source.name}"
        shutil.copy2(source, folder / name)
        source_text = str(source.resolve())
    record = {"batch_id": batch_id, "source": source_text, **report.summary(), "result": report.raw}
    (folder / "validation.json").write_text(json.dumps(record, indent=2, default=str))
    return folder


def quarantine_state(quarantine_dir: Path, latest: int = 3) -> dict[str, Any]:
    """A project's quarantine at a glance (``loopml status``): how many batches it holds and
    the ``latest`` ones (batch id, when, the source file, the first failed expectation)."""
    folder = Path(quarantine_dir)
    records = []
    for record_path in folder.glob("*/validation.json") if folder.is_dir() else ():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):  # a half-written record: counted, described by its folder
            record = {}
        messages = record.get("messages") or []
        records.append(
            {
                "batch_id": record.get("batch_id", record_path.parent.name),
                "at": datetime.fromtimestamp(record_path.stat().st_mtime, UTC).isoformat(
                    timespec="seconds"
                ),
                "source": record.get("source"),
                "reason": messages[0] if messages else None,
                "folder": str(record_path.parent),
            }
        )
    records.sort(key=lambda entry: entry["at"], reverse=True)
    return {"quarantine_dir": str(folder), "batches": len(records), "latest": records[:latest]}


# --- building the GX objects --------------------------------------------------------------------


def _build_suite(suite_json: dict, source: str = "the suite") -> Any:
    import great_expectations as gx

    # Ids from an earlier save would clash with the fresh context's store.
    cleaned = {key: value for key, value in suite_json.items() if key != "id"}
    cleaned["expectations"] = [
        {key: value for key, value in expectation.items() if key != "id"}
        if isinstance(expectation, dict)
        else expectation
        for expectation in cleaned.get("expectations", [])
    ]
    try:
        with _quiet():
            suite = gx.ExpectationSuite(**cleaned)
    except Exception as exc:  # GX raises pydantic, marshmallow and its own errors here
        reason = _invalid_expectation(cleaned) or _first_line(exc)
        raise ConfigError(f"{source} is not a valid expectation suite: {reason}") from exc
    if len(suite.expectations) != len(cleaned["expectations"]):
        # GX logs and drops an invalid expectation; a silently weaker suite is worse than an error.
        raise ConfigError(
            f"{source} is not a valid expectation suite: "
            f"{_invalid_expectation(cleaned) or 'an expectation could not be loaded'}"
        )
    return suite


def _invalid_expectation(suite_json: dict) -> str | None:
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    for position, expectation in enumerate(suite_json["expectations"], start=1):
        try:
            with _quiet():
                ExpectationConfiguration(**expectation).to_domain_obj()
        except Exception as exc:
            kind = expectation.get("type") if isinstance(expectation, dict) else None
            return f"expectation {position} ({kind!r}): {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic: name the first offending field
        try:
            first = errors()[0]
            return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
        except (TypeError, IndexError, KeyError):
            pass
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _progress_bars_off() -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    return ProgressBarsConfig(globally=False, metric_calculations=False)


class _quiet:
    """Silence GX's warnings and log records while it runs (failures reach the result or raise)."""

    def __enter__(self) -> None:
        self._logger = logging.getLogger("great_expectations")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc_info: object) -> None:
        self._warnings.__exit__(*exc_info)
        self._logger.setLevel(self._level)


# --- reading the result ------------------------------------------------------------------------


def _report(raw: dict, docs_index: Path | None) -> ValidationReport:
    results = raw.get("results", [])
    missing_columns = {
        result["expectation_config"]["kwargs"].get("column")
        for result in results
        if result["expectation_config"]["type"] == "expect_column_to_exist"
        and not result["success"]
    }
    failures = [_failure(result) for result in results if not result["success"]]
    # An expectation that could not run on a missing or mistyped column repeats what the
    # column's other failure already says.
    explained = missing_columns | {failure.column for failure in failures if not failure.error}
    failures = [
        failure for failure in failures if not (failure.error and failure.column in explained)
    ]
    statistics = raw.get("statistics", {})
    return ValidationReport(
        success=bool(raw.get("success")),
        evaluated=int(statistics.get("evaluated_expectations", len(results))),
        successful=int(statistics.get("successful_expectations", 0)),
        failures=failures,
        raw=raw,
        data_docs_path=docs_index,
    )


def _failure(result: dict) -> ExpectationFailure:
    config = result["expectation_config"]
    kwargs = config.get("kwargs", {})
    outcome = result.get("result") or {}
    error = None
    exception_info = result.get("exception_info") or {}
    # Single-metric failures put the info at the top level; multi-metric ones nest it per metric.
    infos = (
        [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    )
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            error = info.get("exception_message") or "the expectation raised an error"
            break
    examples = outcome.get("partial_unexpected_list") or []
    if config["type"] == "expect_column_values_to_not_be_null":
        examples = []  # the unexpected values are the nulls themselves
    guard = ((config.get("meta") or {}).get("loopml") or {}).get("guard")
    return ExpectationFailure(
        column=kwargs.get("column"),
        expectation_type=config["type"],
        expected=GUARD_TEXT.get(guard) or _expected_text(config["type"], kwargs),
        unexpected_count=outcome.get("unexpected_count"),
        unexpected_percent=outcome.get("unexpected_percent"),
        examples=_distinct_examples(examples),
        observed_value=outcome.get("observed_value"),
        role=_role(config),
        error=error,
    )


def _distinct_examples(values: list[Any]) -> list[Any]:
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    return distinct[:MAX_EXAMPLES]


def _expected_text(expectation_type: str, kwargs: dict) -> str:
    mostly = kwargs.get("mostly")
    share = f" for at least {_percent(mostly)} of rows" if mostly is not None and mostly < 1 else ""
    if expectation_type == "expect_column_to_exist":
        return "the column to be present"
    if expectation_type == "expect_column_values_to_not_be_null":
        return f"values not null{share}"
    if expectation_type == "expect_column_values_to_be_in_set":
        values = list(kwargs.get("value_set") or [])
        shown = ",".join(repr(value) for value in values[:10])
        more = f",... ({len(values)} values)" if len(values) > 10 else ""
        return f"values in {{{shown}{more}}}{share}"
    if expectation_type == "expect_column_values_to_match_strftime_format":
        date_format = kwargs.get("strftime_format")
        return f"dates written as {date_format!r} (the training data's format){share}"
    if expectation_type == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        if low is not None and high is not None:
            bounds = f"between {_number(low)} and {_number(high)}"
            if isinstance(low, str) and isinstance(high, str):
                return f"dates {bounds}{share}"  # bounds of a date range, as the model reads it
        elif low is not None:
            bounds = f"at least {_number(low)}"
        else:
            bounds = f"at most {_number(high)}"
        return f"values {bounds}{share}"
    if expectation_type == "expect_column_values_to_be_in_type_list":
        type_list = kwargs.get("type_list") or []
        if set(type_list) == set(NUMERIC_TYPE_LIST):
            return f"numeric values (an int or float dtype){share}"
        return f"values of type {', '.join(map(str, type_list))}{share}"
    details = ", ".join(
        f"{key}={value!r}" for key, value in kwargs.items() if key not in {"column", "batch_id"}
    )
    return f"{expectation_type.removeprefix('expect_').replace('_', ' ')}" + (
        f" ({details})" if details else ""
    )


def _describe(failure: ExpectationFailure) -> str:
    subject = f"column {failure.column!r}" if failure.column else "table"
    if failure.role == "target":
        subject = f"target {subject}"
    if failure.expectation_type == "expect_column_to_exist":
        return f"{subject}: missing from the batch"
    line = f"{subject}: expected {failure.expected}"
    if failure.error:
        return f"{line}; could not be evaluated: {failure.error}"
    if failure.unexpected_count is not None:
        percent = f" ({failure.unexpected_percent:.1f}%)" if failure.unexpected_percent else ""
        noun = "null value" if "not_be_null" in failure.expectation_type else "unexpected value"
        plural = "" if failure.unexpected_count == 1 else "s"
        line += f"; {failure.unexpected_count} {noun}{plural}{percent}"
        if failure.examples:
            line += ", e.g. " + ", ".join(repr(example) for example in failure.examples)
    elif failure.observed_value is not None:
        line += f"; observed {failure.observed_value!r}"
    return line


def _merged(results: list[dict]) -> dict:
    """One GX result from the results of the batches a suite ran on."""
    if len(results) == 1:
        return results[0]
    merged = {**results[0], "results": [item for result in results for item in result["results"]]}
    evaluated = len(merged["results"])
    successful = sum(1 for item in merged["results"] if item.get("success"))
    merged["success"] = all(result.get("success") for result in results)
    merged["statistics"] = {
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
        "success_percent": 100.0 * successful / evaluated if evaluated else None,
    }
    return merged


def _date_formats(expectations: list[dict]) -> dict[str, str]:
    """Column -> strftime format, from the suite's strftime-format checks."""
    return {
        kwargs["column"]: kwargs["strftime_format"]
        for expectation in expectations
        if expectation.get("type") == "expect_column_values_to_match_strftime_format"
        for kwargs in [expectation.get("kwargs") or {}]
        if isinstance(kwargs.get("column"), str) and isinstance(kwargs.get("strftime_format"), str)
    }


def _reads_dates(expectation: Any) -> bool:
    meta = expectation.get("meta") if isinstance(expectation, dict) else None
    loopml_meta = (meta or {}).get("loopml") or {}
    return isinstance(loopml_meta, dict) and loopml_meta.get("reads_as") == "dates"


def _role(expectation: Any) -> str | None:
    meta = expectation.get("meta") if isinstance(expectation, dict) else None
    loopml_meta = (meta or {}).get("loopml") or {}
    return loopml_meta.get("role") if isinstance(loopml_meta, dict) else None


def _loopml_meta(suite_json: dict) -> dict:
    meta = suite_json.get("meta") or {}
    loopml_meta = meta.get("loopml") if isinstance(meta, dict) else None
    return loopml_meta if isinstance(loopml_meta, dict) else {}


def _percent(share: float) -> str:
    text = f"{share * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _json_safe(value: Any) -> Any:
    """Plain JSON types (GX results may hold numpy scalars and NaN)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
