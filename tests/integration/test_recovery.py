"""The loop brings the model back: a concept-drift stream on the Telco sample, end to end.

A champion trained on 2,000 Telco rows; then labelled batches, each monitored with its target
(``monitor_flow``) and, on every alarm, retrained for that batch (``retrain_flow``), as the
automation does. First two clean batches, each also retrained as a schedule would: the gate
must promote nothing (no difference outside its interval on traffic that did not change). Then
the demo's concept drift (electronic-check payers stop churning, long contracts start): after
four drifted batches the champion must have closed most of the gap to the oracle on fresh rows
of the new traffic (recovery >= 0.8; the oracle is HistGradientBoosting refitted on the drifted
rows the loop saw, or on those plus the reference, whichever is better).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml import demo
from tests.integration.maintenance_fixtures import MaintainedProject, maintained_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

NAME = "recovery_telco"
ROWS = 300
DRIFTED_BATCHES = 4
FRESH_ROWS = 900
TRIALS = 3


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server, telco_frame) -> MaintainedProject:
    with maintained_project(
        tmp_path_factory.mktemp("recovery"), prefect_server.api_url, NAME, telco_frame
    ) as trained:
        yield trained


def _monitor_and_retrain(project: MaintainedProject, frame: pd.DataFrame, label: str, force=False):
    from flows.monitoring import monitor_flow
    from flows.retraining import retrain_flow

    path = project.write(frame, f"{label}.csv")
    verdict = monitor_flow(project=NAME, data=str(path), project_dir=str(project.project_dir))
    alarm = verdict["drift_detected"] or verdict["performance_degraded"]
    result = None
    if alarm or force:
        result = retrain_flow(
            project=NAME,
            project_dir=str(project.project_dir),
            batch_id=verdict["batch_id"],
            trials=TRIALS,
        )
    return verdict, result


@pytest.fixture(scope="module")
def stream(project) -> dict:
    rng = np.random.default_rng(11)
    fresh_pool, stream_pool = project.pool.iloc[:1_600], project.pool.iloc[1_600:]
    clean = []
    for index in range(2):
        batch = demo.clean_batch(stream_pool, ROWS, rng)
        clean.append(_monitor_and_retrain(project, batch, f"clean-{index}", force=True))
    champion_after_clean = str(project.champion().version)
    drifted, results = [], []
    for index in range(DRIFTED_BATCHES):
        batch = demo.drifting_batch(stream_pool, ROWS, rng, 1.0)
        drifted.append(batch)
        results.append(_monitor_and_retrain(project, batch, f"drift-{index}"))
    return {
        "clean": clean,
        "champion_after_clean": champion_after_clean,
        "drifted": drifted,
        "results": results,
        # Drawn like the batches, so the fresh rows have their mix.
        "fresh": pd.concat(
            [demo.drifting_batch(fresh_pool, ROWS, rng, 1.0) for _ in range(FRESH_ROWS // ROWS)],
            ignore_index=True,
        ),
    }


def test_a_clean_stream_promotes_nothing(project, stream):
    for verdict, result in stream["clean"]:
        assert not verdict["drift_detected"] and not verdict["performance_degraded"]
        assert result["skipped"] is False and result["promoted"] is False, result["reason"]
        assert "not better with confidence" in result["reason"]
    assert stream["champion_after_clean"] == "1"


def test_a_concept_drift_stream_recovers(project, stream):
    from loopml.comparison import load_scorer
    from loopml.recovery import oracle_error, recovery, scorer_error

    runtime = project.runtime()
    config = runtime.config
    final = str(project.champion().version)
    stale = scorer_error(load_scorer(runtime.mlflow, NAME, "1", config), stream["fresh"], config)
    loop = scorer_error(load_scorer(runtime.mlflow, NAME, final, config), stream["fresh"], config)
    oracle = oracle_error(
        config,
        pd.concat(stream["drifted"], ignore_index=True),
        project.training_frame,
        stream["fresh"],
    )
    reasons = [r["reason"] for _, r in stream["results"] if r and not r.get("skipped")]

    assert final != "1", reasons
    assert recovery(stale, loop, oracle) >= 0.8, (stale, loop, oracle, reasons)
    promoted = [e for e in project.ledger() if e["action"] == "promoted" and e["version"] != "1"]
    assert all(e["data_policy"]["policy"] in e["data_policy"]["scores"] for e in promoted)
