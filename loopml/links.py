"""Links between the three UIs (Prefect, MLflow, Evidently), built from ``stack.json``.

A flow run cannot know on its own where the UIs listen: ``loopml up`` records their URLs in
``$LOOPML_HOME/stack.json``. Without a running stack (a plain CLI call) there are no UI URLs and
every function here returns ``None`` (or leaves the link out), so callers fall back to file paths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


@dataclass(frozen=True)
class UiUrls:
    """Base URLs of the UIs of a running stack (``None``: that UI is not served over HTTP)."""

    prefect: str | None = None
    mlflow: str | None = None
    evidently: str | None = None

    def prefect_flow_run(self, flow_run_id: str | None) -> str | None:
        if not (self.prefect and flow_run_id):
            return None
        return f"{self.prefect}/runs/flow-run/{flow_run_id}"

    def mlflow_run(self, experiment_id: str | None, run_id: str | None) -> str | None:
        if not (self.mlflow and experiment_id and run_id):
            return None
        return f"{self.mlflow}/#/experiments/{experiment_id}/runs/{run_id}"

    def mlflow_model_version(self, model: str, version: str | None) -> str | None:
        if not (self.mlflow and version):
            return None
        return f"{self.mlflow}/#/models/{quote(model)}/versions/{version}"

    def evidently_snapshot(self, project_id: str | None, snapshot_id: str | None) -> str | None:
        if not (self.evidently and project_id and snapshot_id):
            return None
        return f"{self.evidently}/projects/{project_id}/reports/{snapshot_id}"

    def evidently_dashboard(self, project_id: str | None) -> str | None:
        if not (self.evidently and project_id):
            return None
        return f"{self.evidently}/projects/{project_id}"


def ui_urls(stack_file: Path) -> UiUrls:
    """The UI URLs recorded by ``loopml up`` (empty when no stack has written the file).

    Only ``http(s)`` URLs count: an MLflow store given as ``sqlite:///...`` has no pages.
    """
    try:
        stack = json.loads(stack_file.read_text())
    except (OSError, ValueError):
        return UiUrls()
    if not isinstance(stack, dict):
        return UiUrls()

    def web(key: str) -> str | None:
        value = stack.get(key)
        return value.rstrip("/") if isinstance(value, str) and value.startswith("http") else None

    return UiUrls(
        prefect=web("prefect_ui_url"), mlflow=web("mlflow_url"), evidently=web("evidently_url")
    )


def markdown_links(links: dict[str, str | None]) -> str:
    """``[name](url)`` for each link that exists, joined by " · " (empty when none exist)."""
    return " · ".join(f"[{name}]({url})" for name, url in links.items() if url)
