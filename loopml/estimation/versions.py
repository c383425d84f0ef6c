"""The estimator stored with a registered model version (artifacts of its run, and a tag)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loopml.estimation.estimator import CALIBRATION_FILE, PerformanceEstimator

ESTIMATION_DIR = "estimation"
ESTIMATOR_TAG = "loopml.estimator"


def store_estimator(
    client: Any, name: str, version: str, run_id: str, estimator: PerformanceEstimator
) -> None:
    """Log the estimator as artifacts of the version's run and name its method in a tag.

    The registered model itself is left untouched: the calibration is applied beside it.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        for path in estimator.save(Path(scratch)):
            client.log_artifact(run_id, str(path), artifact_path=ESTIMATION_DIR)
    client.set_model_version_tag(name, str(version), ESTIMATOR_TAG, estimator.method)


def load_version_estimator(
    client: Any, model_version: Any, cache_dir: Path
) -> PerformanceEstimator | None:
    """The estimator stored with ``model_version``; ``None`` for versions registered without one."""
    if model_version.tags.get(ESTIMATOR_TAG) not in ("cbpe", "dle"):
        return None
    folder = cache_dir / model_version.run_id / ESTIMATION_DIR
    if not (folder / CALIBRATION_FILE).is_file():
        import shutil
        import tempfile

        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            local = client.download_artifacts(model_version.run_id, ESTIMATION_DIR, scratch)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(local, folder)
    return PerformanceEstimator.load(folder)
