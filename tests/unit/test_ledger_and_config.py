"""The promotion ledger, the rollback target, project configs and installation settings."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import yaml

from loopml import ledger
from loopml.config import (
    ColumnsConfig,
    ProjectConfig,
    config_path,
    load_config,
    save_config,
)
from loopml.errors import ConfigError, ProjectNotFound
from loopml.settings import load_settings, prefect_environment
from tests.unit.ledger_workers import _append_many, _claim

# --- ledger ----------------------------------------------------------------------------------


def test_append_entry_stamps_and_keeps_order(tmp_path):
    first = ledger.append_entry(tmp_path, "churn", {"action": "registered", "version": "1"})
    ledger.append_entry(tmp_path, "churn", {"action": "promoted", "version": "1"})

    entries = ledger.read_entries(tmp_path, "churn")

    assert [entry["action"] for entry in entries] == ["registered", "promoted"]
    assert entries[0] == first
    assert entries[0]["at"].endswith("+00:00")  # an aware UTC timestamp
    assert ledger.ledger_path(tmp_path, "churn").read_text().count("\n") == 2


def test_append_entry_keeps_a_given_timestamp(tmp_path):
    ledger.append_entry(
        tmp_path, "churn", {"action": "promoted", "at": "2026-01-01T00:00:00+00:00"}
    )

    assert ledger.read_entries(tmp_path, "churn")[0]["at"] == "2026-01-01T00:00:00+00:00"


def test_projects_have_separate_ledgers(tmp_path):
    ledger.append_entry(tmp_path, "a", {"action": "promoted", "version": "1"})

    assert ledger.read_entries(tmp_path, "b") == []
    assert len(ledger.read_entries(tmp_path, "a")) == 1


def test_append_if_absent_skips_a_matching_entry(tmp_path):
    claim = {"action": "retrain-claimed", "batch_id": "b1"}
    same_batch = lambda entry: entry.get("batch_id") == "b1"  # noqa: E731

    assert ledger.append_if_absent(tmp_path, "churn", claim, same_batch) is not None
    assert ledger.append_if_absent(tmp_path, "churn", claim, same_batch) is None
    other = {"action": "retrain-claimed", "batch_id": "b2"}
    assert ledger.append_if_absent(
        tmp_path, "churn", other, lambda entry: entry.get("batch_id") == "b2"
    )

    assert [entry["batch_id"] for entry in ledger.read_entries(tmp_path, "churn")] == ["b1", "b2"]


def _run_processes(target, argument_lists) -> None:
    processes = [
        multiprocessing.get_context("forkserver").Process(target=target, args=a)
        for a in argument_lists
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0


def test_concurrent_claims_exactly_one_wins(tmp_path):
    context = multiprocessing.get_context("forkserver")
    workers = 8
    barrier = context.Barrier(workers)
    results = context.Queue()

    _run_processes(_claim, [(str(tmp_path), worker, barrier, results) for worker in range(workers)])

    outcomes = dict(results.get(timeout=10) for _ in range(workers))
    winners = [worker for worker, won in outcomes.items() if won]
    assert len(winners) == 1
    entries = ledger.read_entries(tmp_path, "churn")
    assert len(entries) == 1
    assert entries[0]["worker"] == winners[0]


def test_concurrent_appends_do_not_interleave(tmp_path):
    workers, count = 6, 40
    barrier = multiprocessing.get_context("forkserver").Barrier(workers)

    _run_processes(
        _append_many, [(str(tmp_path), worker, count, barrier) for worker in range(workers)]
    )

    lines = ledger.ledger_path(tmp_path, "churn").read_text().splitlines()
    assert len(lines) == workers * count
    entries = [json.loads(line) for line in lines]
    for worker in range(workers):
        indexes = [entry["index"] for entry in entries if entry["worker"] == worker]
        assert indexes == list(range(count))  # each writer's entries, complete and in order


# --- the rollback target -------------------------------------------------------------------------


def _history(*steps: str) -> list[dict]:
    """``"p2"`` = promoted v2, ``"r1"`` = rolled back to v1, ``"x3"`` = refused v3, ``"g4"`` =
    registered v4."""
    actions = {"p": "promoted", "r": "rolled_back", "x": "refused", "g": "registered"}
    return [{"action": actions[step[0]], "version": step[1:]} for step in steps]


@pytest.mark.parametrize(
    ("steps", "current", "expected"),
    [
        pytest.param((), "1", None, id="no-history"),
        pytest.param(("g1", "p1"), "1", None, id="first-champion-has-no-predecessor"),
        pytest.param(("g1", "p1", "g2", "p2"), "2", "1", id="promoted-twice"),
        pytest.param(("p1", "x2", "p2"), "2", "1", id="refused-then-promoted-by-hand"),
        pytest.param(("p1", "x2", "x3"), "1", None, id="refusals-do-not-count"),
        pytest.param(("p1", "p2", "p3", "r2"), "2", "1", id="second-rollback-walks-back"),
        pytest.param(("p1", "p2", "p3", "r2", "r1"), "1", None, id="rolled-back-to-the-first"),
        pytest.param(("p1", "p2", "r1", "p3"), "3", "1", id="promotion-after-rollback"),
        pytest.param(("p1", "p2", "p1"), "1", "2", id="earlier-version-promoted-again"),
        pytest.param(("p1", "p2", "p2"), "2", "1", id="repeated-promotion-of-the-champion"),
    ],
)
def test_previous_champion(steps, current, expected):
    assert ledger.previous_champion(_history(*steps), current) == expected


def test_second_rollback_after_a_repeated_promotion_does_not_flip_back():
    entries = _history("p1", "p2", "p2")
    first_target = ledger.previous_champion(entries, "2")
    assert first_target == "1"
    entries.append({"action": "rolled_back", "version": first_target})

    assert ledger.previous_champion(entries, "1") is None


# --- project config --------------------------------------------------------------------------


def _valid_config(name: str = "churn") -> ProjectConfig:
    return ProjectConfig(
        name=name,
        data="data/churn.csv",
        target="churned",
        task="classification",
        positive_label="yes",
        columns=ColumnsConfig(numeric=["tenure", "charges"], categorical=["contract"]),
    )


def _write_config(project_dir: Path, name: str, mutate) -> Path:
    raw = _valid_config(name).model_dump(mode="json")
    mutate(raw)
    path = config_path(name, project_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_saved_config_loads_back_unchanged(tmp_path):
    config = _valid_config()
    save_config(config, tmp_path)

    assert load_config("churn", tmp_path) == config


def _set(*path_and_value):
    *keys, value = path_and_value

    def mutate(raw: dict) -> None:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(_set("task", "clustering"), "task", id="bad-task"),
        pytest.param(_set("colour", "red"), "colour", id="unknown-top-level-field"),
        pytest.param(_set("search", "trails", 3), "search.trails", id="unknown-nested-field"),
        pytest.param(_set("search", "trials", -5), "search.trials", id="negative-trials"),
        pytest.param(_set("search", "trials", 0), "search.trials", id="zero-trials"),
        pytest.param(
            _set("gate", "min_improvement", -0.1), "gate.min_improvement", id="negative-margin"
        ),
        pytest.param(_set("split", "test_size", 1.5), "split.test_size", id="test-size-above-1"),
        pytest.param(
            _set("search", "families", ["xgboost"]), "search.families", id="unknown-family"
        ),
    ],
)
def test_invalid_field_is_named(tmp_path, mutate, field):
    path = _write_config(tmp_path, "churn", mutate)

    with pytest.raises(ConfigError) as raised:
        load_config("churn", tmp_path)

    message = str(raised.value)
    assert f"field '{field}" in message
    assert str(path) in message
    assert "\n" not in message


def test_name_mismatch_is_named(tmp_path):
    path = _write_config(tmp_path, "churn", _set("name", "other"))

    with pytest.raises(ConfigError, match=r"field 'name' is 'other', expected 'churn'") as raised:
        load_config("churn", tmp_path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name: [unclosed\ntarget: y\n", "is not valid YAML", id="not-yaml"),
        pytest.param("- just\n- a list\n", "must hold a mapping", id="a-list"),
        pytest.param("", "must hold a mapping", id="empty-file"),
    ],
)
def test_unreadable_config(tmp_path, text, message):
    path = config_path("churn", tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config("churn", tmp_path)


def test_unknown_project(tmp_path):
    with pytest.raises(ProjectNotFound, match=r"unknown project 'ghost'.*loopml init"):
        load_config("ghost", tmp_path)


# --- settings --------------------------------------------------------------------------------


def test_settings_defaults_live_under_dot_loopml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    settings = load_settings({})

    home = tmp_path.resolve() / ".loopml"
    assert settings.home == home
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.mlflow_registry_uri == settings.mlflow_tracking_uri
    assert settings.optuna_storage == f"sqlite:///{home / 'optuna.db'}"
    assert settings.prefect_api_url is None
    assert settings.quarantine_dir == home / "quarantine"
    assert settings.ledger_dir == home / "ledger"
    assert "PREFECT_API_URL" not in prefect_environment(settings)
    assert not home.exists()  # reading settings creates nothing


def test_loopml_home_moves_every_default(tmp_path):
    home = tmp_path / "elsewhere"

    settings = load_settings({"LOOPML_HOME": str(home)})

    assert settings.home == home
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.optuna_storage == f"sqlite:///{home / 'optuna.db'}"
    assert prefect_environment(settings)["PREFECT_HOME"] == str(home / "prefect")


def test_explicit_uris_are_honoured(tmp_path):
    settings = load_settings(
        {
            "LOOPML_HOME": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
            "PREFECT_API_URL": "http://prefect.internal:4200/api",
        }
    )

    assert settings.mlflow_tracking_uri == "http://mlflow.internal:5000"
    assert settings.mlflow_registry_uri == "http://mlflow.internal:5000"
    assert settings.prefect_api_url == "http://prefect.internal:4200/api"
    assert prefect_environment(settings)["PREFECT_API_URL"] == "http://prefect.internal:4200/api"


def _write_stack(home: Path, pid: int) -> None:
    """The record the local Prefect server's supervisor keeps while it runs."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "server.json").write_text(
        json.dumps({"pid": pid, "api_url": "http://127.0.0.1:4999/api"})
    )


def test_a_running_stack_provides_the_prefect_url(tmp_path):
    _write_stack(tmp_path, os.getpid())

    assert load_settings({"LOOPML_HOME": str(tmp_path)}).prefect_api_url == (
        "http://127.0.0.1:4999/api"
    )
    explicit = load_settings({"LOOPML_HOME": str(tmp_path), "PREFECT_API_URL": "http://x:1/api"})
    assert explicit.prefect_api_url == "http://x:1/api"


def test_a_dead_stack_is_ignored(tmp_path):
    finished = multiprocessing.get_context("forkserver").Process(target=os.getpid)
    finished.start()
    finished.join()
    _write_stack(tmp_path, finished.pid)

    assert load_settings({"LOOPML_HOME": str(tmp_path)}).prefect_api_url is None


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        pytest.param(
            {"at": "T", "action": "promoted", "version": "2", "reason": "beats it"},
            "T promoted v2 beats it",
            id="manual-promotion",
        ),
        pytest.param(
            {
                "at": "T",
                "action": "retrain_started",
                "batch_id": "b7",
                "trigger": {"kind": "event", "event": "loopml.drift.detected", "batch_id": "b7"},
            },
            "T retrain_started [loopml.drift.detected, batch b7]",
            id="event-without-version",
        ),
        pytest.param(
            {"at": "T", "action": "retrain_started", "trigger": {"kind": "scheduled"}},
            "T retrain_started [scheduled]",
            id="scheduled",
        ),
    ],
)
def test_status_history_lines_name_what_is_known_and_nothing_else(entry, line):
    from loopml.cli.registry import history_line

    assert history_line(entry) == line


def test_performance_lines_state_the_drop_in_the_units_of_the_bound():
    from loopml.cli.project import performance_line
    from loopml.monitoring import performance_verdict

    relative = performance_verdict(
        {"rmse": 12.0}, {"rmse": 10.0}, metric="rmse", max_drop=0.15, rows=300, min_rows=50
    )
    absolute = performance_verdict(
        {"roc_auc": 0.83}, {"roc_auc": 0.85}, metric="roc_auc", max_drop=0.05, rows=300, min_rows=50
    )
    too_few = performance_verdict(
        {"rmse": 12.0}, {"rmse": 10.0}, metric="rmse", max_drop=0.15, rows=10, min_rows=50
    )

    assert performance_line(relative) == (
        "rmse 12.0000 vs 10.0000 held-out on 300 rows: DEGRADED (drop 20%, max 15%)"
    )
    assert performance_line(absolute) == (
        "roc_auc 0.8300 vs 0.8500 held-out on 300 rows: ok (drop 0.0200, max 0.05)"
    )
    assert "only 10 labelled rows" in performance_line(too_few)
    noisy = performance_verdict(
        {"roc_auc": 0.77}, {"roc_auc": 0.85}, metric="roc_auc", max_drop=0.05, rows=60,
        min_rows=50, standard_error=0.06, alpha=0.05,
    )  # fmt: skip
    assert performance_line(noisy) == (
        "roc_auc 0.7700 vs 0.8500 held-out on 60 rows: ok, within the sampling noise of 60 rows "
        "(drop 0.0800, max 0.05)"
    )


def test_an_alias_move_is_one_line_naming_both_versions(capsys):
    from loopml.cli.registry import render_alias_move

    render_alias_move({"version": "3", "previous_champion": "2", "reason": "rollback from v2"})
    render_alias_move({"version": "1", "previous_champion": None, "reason": "manual promotion"})

    assert capsys.readouterr().out.splitlines() == [
        "champion -> v3 (was v2): rollback from v2",
        "champion -> v1: manual promotion",
    ]
