"""``loopml status`` reads the registry without MLflow, and reads what MLflow's client reads."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from loopml import registry_view
from loopml.registry_view import read_model, sqlite_path

NAME = "churn"


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A real MLflow SQLite registry: v1 (old champion, deleted later), v2 champion, v3
    challenger, each with loopml's tags; a second model that must not leak into the view."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in (NAME, "other"):
        client.create_registered_model(name)
        for number in (1, 2, 3):
            client.create_model_version(
                name,
                source=str(tmp_path / f"{name}-{number}"),
                tags={"loopml.family": f"family-{number}", "loopml.test_roc_auc": f"0.8{number}"},
            )
    client.set_registered_model_alias(NAME, "champion", "2")
    client.set_registered_model_alias(NAME, "challenger", "3")
    client.set_registered_model_alias("other", "champion", "1")
    client.delete_model_version(NAME, "1")
    return uri


def _as_dict(view: registry_view.ModelView) -> dict:
    return {
        "versions": [(v.version, v.run_id, v.tags) for v in view.versions],
        "champion": view.by_alias("champion"),
        "challenger": view.by_alias("challenger"),
    }


def test_fast_path_reads_what_mlflows_client_reads(store: str) -> None:
    fast = read_model(store, None, NAME)
    through_client = registry_view._read_with_client(store, None, NAME)
    assert _as_dict(fast) == _as_dict(through_client)
    assert [v.version for v in fast.versions] == ["2", "3"]  # the deleted v1 is gone
    assert fast.by_alias("champion").tags["loopml.family"] == "family-2"
    assert registry_view.tag_metrics(fast.by_alias("challenger").tags) == {"roc_auc": 0.83}


def test_a_schema_it_does_not_know_is_read_by_mlflows_client(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another MLflow's migrations (another Alembic revision) take the client's path."""
    called = []
    real = registry_view._read_with_client

    def spy(*args):
        called.append(args)
        return real(*args)

    monkeypatch.setattr(registry_view, "_read_with_client", spy)
    monkeypatch.setattr(registry_view, "KNOWN_SCHEMA_REVISIONS", frozenset({"another"}))
    view = read_model(store, None, NAME)
    assert called and view.by_alias("champion").version == "2"


def test_no_database_yet_is_no_model(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    assert read_model(uri, None, NAME).versions == []
    assert not (tmp_path / "absent.db").exists()  # a read creates nothing


def test_the_fast_path_opens_the_database_read_only(store: str) -> None:
    path = sqlite_path(store)
    before = path.stat().st_mtime_ns
    with sqlite3.connect(path) as writer:  # a writer holding no lock does not block the read
        writer.execute("SELECT 1")
    read_model(store, None, NAME)
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:////tmp/x/mlflow.db", Path("/tmp/x/mlflow.db")),
        ("sqlite:///relative.db", Path("relative.db")),
        ("http://127.0.0.1:5000", None),
        ("postgresql://u@h/db", None),
        ("sqlite:///x.db?mode=memory", None),
    ],
)
def test_sqlite_path(uri: str, expected: Path | None) -> None:
    assert sqlite_path(uri) == expected


def test_status_imports_neither_mlflow_nor_scikit_learn(store: str, tmp_path: Path) -> None:
    """What keeps ``loopml status`` under a second: the command, in a fresh interpreter, loads
    neither library (nor Prefect) on the embedded default."""
    repo = Path(__file__).resolve().parents[2]
    project_dir = tmp_path / "project"
    (project_dir / "configs").mkdir(parents=True)
    (project_dir / "configs" / f"{NAME}.yaml").write_text(
        (repo / "configs" / "telco.yaml").read_text().replace("name: telco", f"name: {NAME}", 1)
    )
    probe = (
        "import sys, json\n"
        "from loopml.cli.app import main\n"
        "sys.argv = ['loopml', 'status', sys.argv[1], '--project-dir', sys.argv[2], '--json']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'loaded': [m for m in ('mlflow', 'sklearn', 'prefect',"
        " 'great_expectations', 'evidently') if m in sys.modules]}))\n"
    )
    env = {**os.environ, "LOOPML_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": store}
    env.pop("PREFECT_API_URL", None)
    completed = subprocess.run(
        [sys.executable, "-c", probe, NAME, str(project_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    lines = completed.stdout.strip().splitlines()
    status, probe_result = json.loads(lines[-2]), json.loads(lines[-1])
    assert probe_result == {"code": 0, "loaded": []}, completed.stderr
    assert status["champion"]["version"] == "2"
    assert status["versions"] == ["2", "3"]
