"""Fail-closed registry reads, torn state lines, always-on validation guards, MLflow safety env."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from loopml import ledger
from loopml.errors import RegistryError
from loopml.ledger import promotion_lock
from loopml.registry import owner_is_gone, process_owner, version_by_alias
from loopml.settings import mlflow_environment
from loopml.validation import validate_frame

# --- registry reads fail closed -----------------------------------------------------------------


def test_only_not_found_means_none_and_an_unreachable_registry_raises(monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (
        INTERNAL_ERROR,
        INVALID_PARAMETER_VALUE,
        RESOURCE_DOES_NOT_EXIST,
    )

    from loopml.registry import is_not_found

    assert is_not_found(
        MlflowException("Registered model alias champion not found.", INVALID_PARAMETER_VALUE)
    )
    assert is_not_found(
        MlflowException("Registered Model with name=x not found", RESOURCE_DOES_NOT_EXIST)
    )
    assert not is_not_found(MlflowException("database is locked", INTERNAL_ERROR))
    assert not is_not_found(MlflowException("bad alias name", INVALID_PARAMETER_VALUE))

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = MlflowClient(tracking_uri="http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(RegistryError, match="nothing was promoted"):
        version_by_alias(dead, "model", "champion")


def test_owner_of_a_dead_process_is_gone_and_a_live_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = process_owner().rpartition(":")[0]
    assert owner_is_gone(f"{host}:{child.pid}", 0)
    assert not owner_is_gone(process_owner(), 0)
    assert not owner_is_gone(f"{host}:1", 0)  # pid 1 lives
    assert not owner_is_gone("elsewhere:123", created_ms=int(1e3 * __import__("time").time()))


def test_promotion_lock_times_out_with_one_line(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from loopml.ledger import promotion_lock\n"
            "with promotion_lock(Path(sys.argv[1]), 'm'):\n"
            "    print('held', flush=True); time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(RegistryError, match="promotion lock"),
            promotion_lock(tmp_path, "m", timeout=0.3),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with promotion_lock(tmp_path, "m", timeout=5):  # released when its holder died
        pass


# --- torn state lines ------------------------------------------------------------------------


def test_torn_last_line_is_skipped_with_a_warning_and_the_next_append_is_whole(tmp_path, caplog):
    ledger.append_entry(tmp_path, "churn", {"action": "promoted", "version": "1"})
    path = ledger.ledger_path(tmp_path, "churn")
    with open(path, "a") as handle:
        handle.write('{"action": "promoted", "vers')  # a write cut short by SIGKILL

    with caplog.at_level(logging.WARNING, logger="loopml.state"):
        entries = ledger.read_entries(tmp_path, "churn")
    assert [entry["version"] for entry in entries] == ["1"]
    assert f"line 2 of {path}" in caplog.text

    ledger.append_entry(tmp_path, "churn", {"action": "refused", "version": "2"})
    assert [entry["version"] for entry in ledger.read_entries(tmp_path, "churn")] == ["1", "2"]
    blocked = ledger.append_if_absent(
        tmp_path, "churn", {"action": "x"}, lambda entry: entry.get("version") == "2"
    )
    assert blocked is None


def test_read_jsonl_skips_non_objects_and_missing_files(tmp_path):
    path = tmp_path / "state.jsonl"
    assert ledger.read_jsonl(path) == []
    path.write_text('[1, 2]\n{"batch_id": "b1"}\n\n\x00\x00\n')
    assert ledger.read_jsonl(path) == [{"batch_id": "b1"}]


# --- guards every suite gets at validation time ---------------------------------------------


@pytest.fixture(scope="module")
def suite_and_frame():
    from loopml.config import ColumnsConfig, ProjectConfig
    from loopml.profiling import suggest_suite

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=200),
            "colour": rng.choice(["red", "blue"], size=200),
            "y": rng.choice(["a", "b"], size=200),
        }
    )
    config = ProjectConfig(
        name="guards",
        data="x.csv",
        target="y",
        task="classification",
        positive_label="a",
        columns=ColumnsConfig(numeric=["x"], categorical=["colour"]),
    )
    return suggest_suite(frame, config), frame


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.assign(x=f["x"].where(f.index != 3, np.inf)), "finite numbers"),
        (lambda f: f.assign(x=f["x"].where(f.index != 3, -np.inf)), "finite numbers"),
        (lambda f: f.assign(colour=None), "not null"),
        (lambda f: f.head(0), "at least one row"),
        (lambda f: f.assign(x=f["x"].astype(object).where(f.index != 3, "abc")), "numeric"),
    ],
    ids=["inf", "minus-inf", "all-null", "header-only", "text-in-numeric"],
)
def test_values_that_would_crash_later_fail_validation(suite_and_frame, change, expected):
    # The suggested suite holds none of the guards: they are added at validation time, so
    # suites written before them (existing projects) get them too.
    suite, frame = suite_and_frame
    assert validate_frame(frame, suite).success
    report = validate_frame(change(frame.copy()), suite)
    assert not report.success
    assert any(expected in failure.expected for failure in report.failures), report.failures


# --- the MLflow environment of loopml's processes ---------------------------------------------


def test_pickle_is_always_off_and_the_retry_budget_yields_to_the_user():
    env = mlflow_environment({"MLFLOW_HTTP_REQUEST_TIMEOUT": "99"})
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) <= 3
    forced = mlflow_environment({"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"})
    assert forced["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


# --- smaller refusals ----------------------------------------------------------------------


def test_an_output_loopml_cannot_really_write_is_refused(tmp_path):
    from loopml.data import check_output_path
    from loopml.errors import DataError

    check_output_path(tmp_path / "scores.csv")
    check_output_path(tmp_path / "scores.parquet")
    with pytest.raises(DataError, match=r"--out must end in \.csv or \.parquet"):
        check_output_path(tmp_path / "scores.xlsx")


def test_an_invalid_project_name_is_one_sentence(tmp_path):
    from loopml.errors import ConfigError
    from loopml.project import initialise_project

    with pytest.raises(ConfigError, match="invalid project name 'bad name!'") as raised:
        initialise_project(
            str(tmp_path / "missing.csv"),
            target="y",
            name="bad name!",
            task=None,
            positive_label=None,
            id_column=None,
            time_column=None,
            sql_url=None,
            project_dir=tmp_path,
        )
    assert "\n" not in str(raised.value)
