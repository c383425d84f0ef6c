"""Estimated performance without labels, for real: a trained Telco champion carries its CBPE
estimator as MLflow artifacts; an unlabelled covariate-shift batch gets an estimate with an
interval (through the flows and the CLI), and once its labels arrive the realised ROC-AUC sits
beside the estimate, inside the interval.

The covariate shift selects pool rows (short tenures and month-to-month contracts three times
as likely) instead of editing features, so P(churn | features) is unchanged: the setting CBPE
is built for.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import last_json, run_cli
from tests.integration.maintenance_fixtures import MaintainedProject, maintained_project

NAME = "estimate_telco"


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("estimation"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


def covariate_shift(pool: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    weight = np.where(pool["contract"] == "Month-to-month", 3.0, 1.0)
    weight = weight * np.where(pool["tenure"] < 12, 3.0, 1.0)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=rows, replace=False, p=weight / weight.sum())
    return pool.iloc[picked].reset_index(drop=True)


def test_the_champion_carries_its_estimator(project):
    champion = project.champion()

    assert champion.tags["loopml.estimator"] == "cbpe"
    from loopml.estimation.estimator import PerformanceEstimator
    from loopml.estimation.versions import load_version_estimator

    estimator = load_version_estimator(
        project._client(), champion, project.home / "references" / NAME
    )
    assert isinstance(estimator, PerformanceEstimator) and estimator.positive_index == 1
    # On its own held-out rows the expected AUC is the realised one, up to calibration noise.
    held_out = project.train_result["test_metrics"]["roc_auc"]
    assert estimator.reference_estimated["roc_auc"] == pytest.approx(held_out, abs=0.03)


def test_unlabelled_shifted_batch_is_estimated_and_the_labels_land_inside_the_interval(project):
    from flows.labels import label_flow
    from flows.monitoring import monitor_flow
    from flows.scoring import score_flow

    shifted = covariate_shift(project.pool, 500, seed=5)
    source = project.write(shifted.drop(columns="churn"), "shifted-unlabelled.csv")
    out = project.batches_dir / "shifted-scored.csv"
    score_flow(project=NAME, data=str(source), out=str(out), project_dir=str(project.project_dir))

    result = monitor_flow(project=NAME, data=str(source), project_dir=str(project.project_dir))

    assert result["performance"] is None  # no labels yet
    estimate = result["estimated_roc_auc"]
    lower, upper = result["estimated_roc_auc_lower"], result["estimated_roc_auc_upper"]
    assert lower < estimate < upper and upper - lower < 0.15
    assert result["estimated_performance"]["method"] == "cbpe"
    assert result["estimated_performance"]["degraded"] is False
    assert result["stream"]["alarm"] in (True, False) and result["stream"]["batches"] >= 1

    scored = pd.read_csv(out)
    labels = pd.DataFrame({"row_id": scored["row_id"], "churn": shifted["churn"]})
    label_flow(
        project=NAME,
        data=str(project.write(labels, "shifted-labels.csv")),
        project_dir=str(project.project_dir),
    )

    realised = roc_auc_score(shifted["churn"] == "Yes", scored["probability"])
    assert lower <= realised <= upper, (lower, realised, upper)
    from loopml.status import project_status

    status = project_status(NAME, project.project_dir, project.settings())
    pair = next(p for p in status["estimated_vs_realised"] if p["batch_id"] == result["batch_id"])
    assert pair["estimated"] == pytest.approx(estimate)
    assert pair["realised"] == pytest.approx(realised)
    assert pair["within_interval"] is True


@pytest.mark.slow
def test_cli_monitor_json_carries_the_estimate_and_status_shows_it(project):
    shifted = covariate_shift(project.pool, 400, seed=9).drop(columns="churn")
    source = project.write(shifted, "cli-shifted.csv")

    completed = run_cli("monitor", NAME, "--data", str(source), "--json", cwd=project.project_dir)

    assert completed.returncode == 0, completed.stderr
    result = last_json(completed.stdout)
    assert 0.5 < result["estimated_roc_auc"] < 1
    assert result["estimated_roc_auc_lower"] < result["estimated_roc_auc_upper"]
    assert "stream" in result
    shown = run_cli("status", NAME, cwd=project.project_dir)
    assert shown.returncode == 0, shown.stderr
    assert "estimated vs realised:" in shown.stdout and "stream:" in shown.stdout
