"""``loopml status``: what one project's registry, ledger, monitoring and folders say now.

Light on purpose: it reads files and the registry's rows (:mod:`loopml.registry_view`) and
imports neither MLflow nor scikit-learn on the embedded default, so it answers in well under a
second (``benchmarks/command_latency_benchmark.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loopml import ledger
from loopml.config import load_config
from loopml.registry_view import CHALLENGER, CHAMPION, TAG_PREFIX, read_model, tag_metrics
from loopml.settings import Settings


def last_monitoring(settings: Settings, project: str) -> dict[str, Any] | None:
    path = settings.monitoring_dir / project / "latest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def estimation_status(monitoring_dir: Path, project: str, history: int) -> dict[str, Any]:
    """Estimated vs realised performance of the latest batches, and the stream detector."""
    from dataclasses import asdict

    from loopml.estimation.store import EstimateStore
    from loopml.stream import StreamState

    pairs = EstimateStore(monitoring_dir, project).pairs()
    path = monitoring_dir / project / "stream.json"
    return {
        "estimated_vs_realised": pairs[-history:] if history > 0 else pairs,
        "stream": asdict(StreamState.load(path)) if path.is_file() else None,
    }


def project_status(
    project: str, project_dir: Path, settings: Settings, *, history: int = 10
) -> dict[str, Any]:
    """Champion, challenger, last monitoring verdict and the latest promotion history."""
    from loopml.inbox import inbox_state
    from loopml.validation import quarantine_state

    load_config(project, project_dir)
    model = read_model(settings.mlflow_tracking_uri, settings.mlflow_registry_uri, project)

    def describe(alias: str) -> dict[str, Any] | None:
        version = model.by_alias(alias)
        if version is None:
            return None
        return {
            "version": version.version,
            "family": version.tags.get(f"{TAG_PREFIX}family"),
            "metrics": tag_metrics(version.tags),
            "threshold": version.tags.get(f"{TAG_PREFIX}threshold"),
            "run_id": version.run_id,
        }

    entries = ledger.read_entries(settings.ledger_dir, project)
    decisions = [e for e in entries if e.get("action") != "registered"]
    return {
        "project": project,
        "champion": describe(CHAMPION),
        "challenger": describe(CHALLENGER),
        "versions": [v.version for v in model.versions],
        "last_monitoring": last_monitoring(settings, project),
        **estimation_status(settings.monitoring_dir, project, history),
        "history": decisions[-history:] if history > 0 else decisions,
        "inbox": inbox_state(settings.inbox_dir / project),
        "quarantine": quarantine_state(settings.quarantine_dir / project),
        "tracking_uri": settings.mlflow_tracking_uri,
    }
