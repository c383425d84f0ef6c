"""Every version explains itself, as a user meets it: ``loopml explain``, ``loopml score
--reasons``, ``loopml slices``, and the model card, slices and fairness audit on the champion's
MLflow run (the card in Chromium)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from loopml.config import config_path
from tests.conftest import SAMPLE, init_project, last_json, run_cli

NAME = "churn"
SCORE_COLUMNS = ["row_id", "prediction", "probability", "model_version"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class TrainedProject:
    directory: Path
    env: dict[str, str]
    rows: pd.DataFrame
    client: MlflowClient


def cli_error_line(result) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loopml: error: ")
    return lines[0]


def env_for(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {
        "LOOPML_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@pytest.fixture(scope="module")
def trained(prefect_server, tmp_path_factory) -> TrainedProject:
    """``loopml init`` (which proposes female and senior_citizen) and one quick ``loopml train``."""
    directory = tmp_path_factory.mktemp("explained")
    rows = pd.read_csv(SAMPLE).sample(1_200, random_state=21).reset_index(drop=True)
    data = directory / "telco.csv"
    rows.to_csv(data, index=False)
    init_project(data, "churn", NAME, directory, positive_label="Yes")
    path = config_path(NAME, directory)
    config = yaml.safe_load(path.read_text())
    assert config["sensitive_columns"] == ["female", "senior_citizen"]
    config["search"].update(families=["logistic"], trials=2, timeout_seconds=60)
    config["intended_use"] = "Rank customers by churn risk for retention offers."
    config["gate"]["fairness"] = {"metric": "demographic_parity_difference", "max_increase": 0.1}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    home = directory / "home"
    env = env_for(home, prefect_server.api_url)
    result = run_cli("train", NAME, "--json", cwd=directory, env=env)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["promoted"]
    return TrainedProject(directory, env, rows, MlflowClient(env["MLFLOW_TRACKING_URI"]))


def champion_run(trained: TrainedProject) -> str:
    return trained.client.get_model_version_by_alias(NAME, "champion").run_id


@pytest.mark.slow
def test_the_champions_run_holds_its_model_card_slices_and_fairness_audit(trained) -> None:
    names = [entry.path for entry in trained.client.list_artifacts(champion_run(trained))]
    for part in ("model_card", "slices", "fairness"):
        assert any(part in name for name in names), names
    ledger = run_cli("status", NAME, "--json", cwd=trained.directory, env=trained.env)
    assert ledger.returncode == 0, ledger.stderr


@pytest.mark.slow
def test_explain_writes_per_row_contributions_that_add_up_to_the_champions_output(
    trained, tmp_path, monkeypatch
) -> None:
    batch = trained.rows.iloc[:40]
    data, out = tmp_path / "batch.csv", tmp_path / "explained.csv"
    batch.to_csv(data, index=False)

    result = run_cli(
        "explain",
        NAME,
        "--data",
        str(data),
        "--out",
        str(out),
        "--json",
        cwd=trained.directory,
        env=trained.env,
    )

    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["rows"] == 40 and summary["method"] == "linear"
    table = pd.read_csv(out)
    features = [c for c in batch.columns if c != "churn"]
    assert set(table["reason_1"]) <= set(features)  # the table's own names, not one-hot ones
    assert set(features) <= set(table.columns)
    import mlflow.sklearn

    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", trained.env["MLFLOW_TRACKING_URI"])
    model = mlflow.sklearn.load_model(f"models:/{NAME}@champion")
    probability = model.predict_proba(batch.drop(columns="churn"))[:, 1]
    total = table[features].sum(axis=1) + table["base_value"]
    np.testing.assert_allclose(total, np.log(probability / (1 - probability)), atol=1e-6)


def score(trained: TrainedProject, data: Path, out: Path, *options: str) -> dict:
    result = run_cli(
        "score",
        NAME,
        "--data",
        str(data),
        "--out",
        str(out),
        *options,
        "--json",
        cwd=trained.directory,
        env=trained.env,
    )
    assert result.returncode == 0, result.stderr
    return last_json(result.stdout)


@pytest.mark.slow
def test_score_with_reasons_adds_each_rows_strongest_contributions_as_explain_has_them(
    trained, tmp_path
) -> None:
    batch = trained.rows.iloc[100:160].drop(columns="churn")
    data = tmp_path / "batch.csv"
    batch.to_csv(data, index=False)

    plain = score(trained, data, tmp_path / "plain.csv")
    explained = score(trained, data, tmp_path / "reasons.csv", "--reasons", "4")

    assert plain["reasons"] is None and explained["reasons"] == 4
    without = pd.read_csv(tmp_path / "plain.csv")
    assert list(without.columns) == SCORE_COLUMNS  # the contract, untouched without --reasons
    table = pd.read_csv(tmp_path / "reasons.csv")
    ranks = range(1, 5)
    reason_columns = [f"reason_{k}{part}" for k in ranks for part in ("", "_contribution")]
    assert list(table.columns) == SCORE_COLUMNS + reason_columns
    pd.testing.assert_frame_equal(table[SCORE_COLUMNS], without)  # same predictions
    names = table[[f"reason_{k}" for k in ranks]]
    contributions = table[[f"reason_{k}_contribution" for k in ranks]].to_numpy()
    assert len(table) == 60
    assert names.notna().all().all() and names.isin(list(batch.columns)).all().all()
    assert (names.nunique(axis=1) == 4).all()  # four different columns per row
    assert np.isfinite(contributions).all()
    assert (np.diff(np.abs(contributions), axis=1) <= 0).all()  # strongest first
    assert (contributions < 0).any() and (contributions > 0).any()  # signed
    # The same machinery as ``loopml explain`` (same background): the same reasons.
    result = run_cli(
        "explain",
        NAME,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "explained.csv"),
        "--top",
        "4",
        cwd=trained.directory,
        env=trained.env,
    )
    assert result.returncode == 0, result.stderr
    explanation = pd.read_csv(tmp_path / "explained.csv")
    pd.testing.assert_frame_equal(table[reason_columns], explanation[reason_columns])
    assert explanation["row_id"].tolist() == table["row_id"].tolist()  # they join


@pytest.mark.parametrize("reasons", ["0", "-3"])
def test_score_with_fewer_than_one_reason_is_one_clear_sentence(reasons, tmp_path) -> None:
    result = run_cli(
        "score",
        NAME,
        "--data",
        str(tmp_path / "batch.csv"),
        "--out",
        str(tmp_path / "scored.csv"),
        "--reasons",
        reasons,
        cwd=tmp_path,
        env=env_for(tmp_path / "home"),
    )
    assert f"--reasons must be at least 1 (got {reasons})" in cli_error_line(result)
    assert not (tmp_path / "scored.csv").exists()


@pytest.mark.slow
def test_explain_on_a_file_missing_feature_columns_is_one_clear_sentence(trained, tmp_path) -> None:
    data = tmp_path / "partial.csv"
    trained.rows.drop(columns=["tenure"]).iloc[:5].to_csv(data, index=False)
    result = run_cli(
        "explain",
        NAME,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "x.csv"),
        cwd=trained.directory,
        env=trained.env,
    )
    assert "missing feature column(s): tenure" in cli_error_line(result)
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_slices_lists_the_champions_worst_held_out_slices_first(trained, tmp_path) -> None:
    result = run_cli("slices", NAME, "--json", cwd=trained.directory, env=trained.env)
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)
    assert summary["source"] == "held-out rows"
    batch = tmp_path / "labelled.csv"
    trained.rows.iloc[:300].to_csv(batch, index=False)
    labelled = run_cli(
        "slices", NAME, "--data", str(batch), "--json", cwd=trained.directory, env=trained.env
    )
    assert labelled.returncode == 0, labelled.stderr
    assert last_json(labelled.stdout)["rows"] == 300
    values = [row["value"] for row in summary["worst_slices"]]
    confident = [row["worse_with_confidence"] for row in summary["worst_slices"]]
    assert confident == sorted(confident, reverse=True)  # confident ones lead
    assert all(
        value <= summary["overall"] for value, sure in zip(values, confident, strict=True) if sure
    )


@pytest.mark.slow
@pytest.mark.browser
def test_the_model_card_opens_offline_in_chromium_with_every_section(trained, tmp_path) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    from loopml.model_card import SECTIONS

    card = Path(
        trained.client.download_artifacts(champion_run(trained), "model_card.html", str(tmp_path))
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(card.as_uri())
        headings = page.locator("h2").all_inner_texts()
        body = page.inner_text("body")
        broken = page.evaluate(
            "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"
        )
        images = page.evaluate("document.images.length")
        page.screenshot(path=str(tmp_path / "model_card.png"), full_page=True)
        browser.close()
    print(f"screenshot: {tmp_path / 'model_card.png'}")
    assert headings == [title for _, title in SECTIONS]
    assert "Rank customers by churn risk" in body
    assert "senior_citizen" in body and "demographic_parity_difference" in body
    assert images >= 3 and broken == 0
    assert all(url.startswith(("file:", "data:")) for url in requests)  # nothing from a network


def test_explain_without_a_champion_is_one_clear_sentence(tmp_path) -> None:
    data = tmp_path / "telco.csv"
    pd.read_csv(SAMPLE).head(200).to_csv(data, index=False)
    init_project(data, "churn", NAME, tmp_path, positive_label="Yes")
    result = run_cli(
        "explain",
        NAME,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "x.csv"),
        cwd=tmp_path,
        env=env_for(tmp_path / "home"),
    )
    assert "has no champion model yet" in cli_error_line(result)
