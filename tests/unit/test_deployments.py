"""deployments/prefect.yaml (``prefect deploy``) says what flows/deployments.py defines.

flows/deployments.py is the one definition (``loopml up`` serves it); the YAML is its spelling
for a server with workers. For a project with the default config, every deployment's
entrypoint, parameters, tags, active schedules, concurrency limit and trigger must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loopml.config import ColumnsConfig, ProjectConfig
from tests.conftest import REPO

PROJECT = "churn"


@pytest.fixture(scope="module")
def defined(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The served deployments and the retrain trigger of a default project, by name."""
    from flows.deployments import evidence_trigger, project_deployments, retrain_trigger

    project_dir = tmp_path_factory.mktemp("project")
    config = ProjectConfig(
        name=PROJECT,
        data="data/churn.csv",
        target="churned",
        task="classification",
        positive_label="yes",
        columns=ColumnsConfig(numeric=["tenure"], categorical=["contract"]),
    )
    return {
        "project_dir": project_dir,
        "deployments": {d.name: d for d in project_deployments(config, project_dir)},
        "trigger": retrain_trigger(config, project_dir),
        "evidence": evidence_trigger(config, project_dir),
    }


def written(project_dir: Path) -> dict[str, dict[str, Any]]:
    """prefect.yaml's deployments with the deploy-time variables filled in, by name."""
    text = (REPO / "deployments" / "prefect.yaml").read_text()
    text = text.replace("{{ $LOOPML_PROJECT_DIR }}", str(project_dir))
    text = text.replace("{{ $LOOPML_PROJECT }}", PROJECT)
    return {entry["name"]: entry for entry in yaml.safe_load(text)["deployments"]}


def test_prefect_yaml_lists_the_defined_deployments(defined) -> None:
    assert set(written(defined["project_dir"])) == set(defined["deployments"])


def test_each_deployment_agrees(defined) -> None:
    for name, entry in written(defined["project_dir"]).items():
        deployment = defined["deployments"][name]
        assert entry["entrypoint"].replace(":", ".") == deployment.entrypoint, name
        assert entry["parameters"] == deployment.parameters, name
        assert entry["tags"] == deployment.tags, name
        active = [
            {"cron": s["cron"]} if "cron" in s else {"interval": s["interval"]}
            for s in entry.get("schedules") or []
            if s.get("active", True)
        ]
        served = [
            {"cron": s.schedule.cron}
            if hasattr(s.schedule, "cron")
            else {"interval": s.schedule.interval.total_seconds()}
            for s in deployment.schedules
            if s.active
        ]
        assert active == served, name
        limit = entry.get("concurrency_limit")
        if deployment.concurrency_limit is None:
            assert limit is None, name
        else:
            assert limit == {
                "limit": deployment.concurrency_limit,
                "collision_strategy": deployment.concurrency_options.collision_strategy.value,
            }, name


def test_the_retrain_trigger_agrees(defined) -> None:
    entries = written(defined["project_dir"])
    triggers = {name: entry.get("triggers") or [] for name, entry in entries.items()}
    assert {name for name, listed in triggers.items() if listed} == {f"retrain-{PROJECT}"}
    entry, evidence = triggers[f"retrain-{PROJECT}"]
    for written_trigger, trigger in ((entry, defined["trigger"]), (evidence, defined["evidence"])):
        _agrees(written_trigger, trigger)


def _agrees(entry: dict[str, Any], trigger: Any) -> None:
    assert entry["posture"] == trigger.posture.value
    assert entry["match"] == trigger.match.model_dump()
    assert set(entry["expect"]) == trigger.expect
    assert set(entry["for_each"]) == trigger.for_each
    assert (entry["threshold"], entry["within"]) == (
        trigger.threshold,
        trigger.within.total_seconds(),
    )
    assert entry["enabled"] == trigger.enabled
    assert entry["parameters"] == trigger.parameters
