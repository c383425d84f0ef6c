"""A table with columns named ``row_id``, ``prediction``, ``probability`` and
``model_version`` (ordinary names, and loopml's own output columns) goes through ``init``,
``train``, ``score``, ``label`` and ``explain`` as a user runs them: the CLI, a gzipped ``;``
CSV, a German positive label and a target name with a space."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import yaml

from loopml.config import load_config
from loopml.scoring import PredictionLog, logged_features
from tests.conftest import last_json, run_cli
from tests.unit.test_clashing_column_names import TARGET, clashing_table

pytestmark = pytest.mark.usefixtures("single_native_thread")

NAME = "coll"
CLASHING = ["row_id", "prediction", "probability", "model_version"]
OUTPUT_COLUMNS = ["row_id", "prediction", "probability", "model_version"]


@pytest.mark.slow
def test_a_table_with_loopmls_column_names_is_scored_labelled_explained_and_monitored(
    prefect_api, loopml_home, project_dir
):
    table = clashing_table()
    table.to_csv(project_dir / "coll.csv", index=False, sep=";")
    batch = table.iloc[:100].drop(columns=[TARGET])
    batch.to_csv(project_dir / "coll_batch.csv.gz", index=False, sep=";", compression="gzip")
    init = run_cli(
        "init", "coll.csv", "--target", TARGET, "--name", NAME, "--positive-label", "Ja",
        cwd=project_dir,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    config_path = project_dir / "configs" / f"{NAME}.yaml"
    raw = yaml.safe_load(config_path.read_text())
    assert sorted(raw["columns"]["numeric"] + raw["columns"]["categorical"]) == sorted(CLASHING)
    raw["search"]["families"] = ["logistic"]  # the names are the point, not the search
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    train = run_cli("train", NAME, "--trials", "2", "--timeout", "30", cwd=project_dir)
    assert train.returncode == 0, train.stderr

    score = run_cli(
        "score", NAME, "--data", "coll_batch.csv.gz", "--out", "p.csv", "--json", cwd=project_dir
    )

    assert score.returncode == 0, score.stderr
    assert last_json(score.stdout)["logged"] is True
    output = pd.read_csv(project_dir / "p.csv")
    assert list(output.columns) == OUTPUT_COLUMNS and len(output) == len(batch)
    champion = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert output["prediction"].tolist() == list(champion.predict(batch))
    config = load_config(NAME, project_dir)
    logged = PredictionLog(loopml_home / "predictions", NAME).read()
    assert logged["row_id"].tolist() == output["row_id"].tolist()
    assert logged_features(logged, config)["row_id"].tolist() == batch["row_id"].tolist()

    pd.DataFrame({"row_id": output["row_id"], TARGET: table[TARGET].iloc[:100]}).to_csv(
        project_dir / "labels.csv", index=False
    )
    label = run_cli("label", NAME, "--data", "labels.csv", "--json", cwd=project_dir)

    assert label.returncode == 0, label.stderr
    assert last_json(label.stdout)["performance_by_version"]["1"]["rows"] == 100

    explain = run_cli(
        "explain", NAME, "--data", "coll_batch.csv.gz", "--out", "e.csv", cwd=project_dir
    )

    assert explain.returncode == 0, explain.stderr
    explained = pd.read_csv(project_dir / "e.csv")
    assert len(explained) == len(batch) and explained.columns.is_unique
    assert {"row_id", "feature:row_id", "prediction", "model_version"} <= set(explained.columns)

    labelled = project_dir / "labelled.csv"
    table.iloc[:200].to_csv(labelled, index=False, sep=";")
    monitor = run_cli("monitor", NAME, "--data", str(labelled), "--json", cwd=project_dir)

    assert monitor.returncode == 0, monitor.stderr
    verdict = last_json(monitor.stdout)
    assert verdict["performance"]["current"]["roc_auc"] > 0.6
    report = Path(verdict["report_path"]).read_text()
    assert "feature:prediction" in report and "feature:probability" in report
