"""A table loopml has never seen gets a sensible model with nothing but ``init`` and ``train``.

The tables are generated here (seeded, shipped nowhere) with a known, strong signal, so a model
that learned anything beats the naive baseline by a wide margin and one that learned nothing
(a dropped column, a leaked id, a mangled target) does not. Both run through the CLI as a user
would run it.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from loopml.config import load_config
from loopml.modeling import CLASSIFICATION_FAMILIES
from tests.conftest import last_json, run_cli

# What a classification champion may be: one family's pipeline, or a blend of several.
CLASSIFIER_KINDS = {*CLASSIFICATION_FAMILIES, "ensemble"}

pytestmark = pytest.mark.usefixtures("single_native_thread")

TRIALS = 3


def house_prices(rows: int = 1_500, seed: int = 11) -> pd.DataFrame:
    """Sale prices: multiplicative in area and neighbourhood, with missing values, an id column
    and a listing date (neither of which may become a feature)."""
    generator = np.random.default_rng(seed)
    neighbourhoods = {
        "Old Town": 1.6,
        "Riverside": 1.3,
        "Harbour": 1.15,
        "Northfield": 1.0,
        "Eastgate": 0.85,
        "Industrial Park": 0.7,
    }
    names = np.array(list(neighbourhoods))
    neighbourhood = names[generator.integers(0, len(names), rows)]
    area = np.round(generator.lognormal(np.log(110), 0.35, rows), 1)
    bedrooms = np.clip(np.round(area / 35 + generator.normal(0, 0.7, rows)), 1, 7).astype(int)
    year_built = generator.integers(1900, 2021, rows)
    condition = generator.integers(1, 6, rows)  # 1 (poor) .. 5 (excellent), an int-coded grade
    garage_kinds = ["none", "single", "double"]
    garage = generator.choice(garage_kinds, rows, p=[0.3, 0.45, 0.25]).astype(object)
    lot_size = np.round(area * generator.uniform(1.5, 6.0, rows), 0)
    price = (
        2_500
        * area
        * np.array([neighbourhoods[n] for n in neighbourhood])
        * (1 + 0.08 * (condition - 3))
        * np.where(garage == "double", 1.12, np.where(garage == "single", 1.05, 1.0))
        * np.where(year_built < 1950, 1.1, np.where(year_built > 2000, 1.08, 1.0))
        * generator.lognormal(0, 0.08, rows)
    )
    frame = pd.DataFrame(
        {
            "house_id": generator.choice(np.arange(100_000, 999_999), rows, replace=False),
            "listed_on": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(generator.integers(0, 700, rows), unit="D"),
            "neighbourhood": neighbourhood,
            "living_area_sqm": area,
            "bedrooms": bedrooms,
            "year_built": year_built,
            "condition": condition,
            "garage": garage,
            "lot_size_sqm": lot_size,
            "sale_price": np.round(price, -2),
        }
    )
    frame["listed_on"] = frame["listed_on"].dt.strftime("%Y-%m-%d")
    frame.loc[generator.random(rows) < 0.1, "lot_size_sqm"] = np.nan
    frame.loc[generator.random(rows) < 0.05, "garage"] = None
    return frame


def loan_defaults(rows: int = 3_000, seed: int = 23) -> pd.DataFrame:
    """Loan applications with an imbalanced 0/1 ``defaulted`` target, bool flags, an int-coded
    region, a real datetime column and a text application id."""
    generator = np.random.default_rng(seed)
    debt_ratio = np.round(generator.beta(2, 4, rows) * 1.5, 3)
    late_payments = generator.poisson(0.8, rows)
    credit_score = np.clip(np.round(generator.normal(680, 60, rows)), 300, 850).astype(int)
    self_employed = generator.random(rows) < 0.15
    has_mortgage = generator.random(rows) < 0.4
    region_code = generator.integers(1, 9, rows)
    purpose = generator.choice(["car", "home improvement", "debt consolidation", "education"], rows)
    income = np.round(generator.lognormal(np.log(48_000), 0.4, rows), -2)
    logit = (
        -3.4
        + 3.2 * (debt_ratio - 0.5)
        + 0.75 * late_payments
        - 0.02 * (credit_score - 680)
        + 0.8 * self_employed
        - 0.4 * has_mortgage
        + 0.6 * (region_code == 7)
        + 0.7 * (purpose == "debt consolidation")
    )
    defaulted = (generator.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "application_id": [f"APP-{value:08x}" for value in generator.permutation(rows) * 7919],
            "applied_at": pd.Timestamp("2025-03-01")
            + pd.to_timedelta(generator.integers(0, 86_400 * 300, rows), unit="s"),
            "income": income,
            "debt_ratio": debt_ratio,
            "late_payments": late_payments,
            "credit_score": credit_score,
            "is_self_employed": self_employed,
            "has_mortgage": has_mortgage,
            "region_code": region_code,
            "loan_purpose": purpose,
            "defaulted": defaulted,
        }
    )
    frame.loc[generator.random(rows) < 0.04, "income"] = np.nan
    return frame


def _init_and_train(data, target: str, name: str, project_dir) -> tuple[dict, dict]:
    init = run_cli("init", str(data), "--target", target, "--name", name, "--json", cwd=project_dir)
    assert init.returncode == 0, init.stderr
    train = run_cli("train", name, "--trials", str(TRIALS), "--json", cwd=project_dir)
    assert train.returncode == 0, train.stderr
    return last_json(init.stdout), last_json(train.stdout)


@pytest.mark.slow
def test_house_prices_regression(prefect_api, loopml_home, project_dir, tmp_path):
    table = house_prices()
    data = tmp_path / "house_sales.csv"
    table.to_csv(data, index=False)

    profile, trained = _init_and_train(data, "sale_price", "houses", project_dir)

    assert profile["task"] == "regression"
    assert "id-like" in profile["excluded"]["house_id"]
    assert "listed_on" in profile["datetime"]  # dates are features (parts, elapsed days)
    assert "neighbourhood" in profile["categorical"] and "garage" in profile["categorical"]
    assert {"living_area_sqm", "lot_size_sqm", "condition"} <= set(profile["numeric"])

    metrics = trained["test_metrics"]
    naive_rmse = table["sale_price"].std()  # predicting the mean, roughly
    assert metrics["r2"] > 0.8
    assert metrics["rmse"] < 0.5 * naive_rmse
    assert trained["promoted"] is True and trained["version"] == "1"
    # Price is a product of area and neighbourhood: trees fit it, a linear model of raw price
    # cannot; a ridge winner would mean the trees were broken (a blend has trees in it).
    assert trained["family"] in {"hist_gradient_boosting", "random_forest", "ensemble"}

    model = mlflow.pyfunc.load_model("models:/houses@champion")
    # pyfunc takes rows as the table holds them (its signature keeps integer columns integer).
    homes = table.sample(200, random_state=3)
    larger = homes.assign(living_area_sqm=homes["living_area_sqm"] * 1.5)
    assert "house_id" not in model.metadata.get_input_schema().input_names()
    assert (model.predict(larger) > model.predict(homes)).mean() > 0.8


def support_tickets(rows: int = 2_000, seed: int = 5) -> pd.DataFrame:
    """Help-desk tickets whose ``priority`` (low / medium / high) follows outage, reach and tier;
    bool flags, an int-coded tier, a datetime and a text ticket reference."""
    generator = np.random.default_rng(seed)
    outage = generator.random(rows) < 0.2
    enterprise = generator.random(rows) < 0.3
    tier = generator.integers(1, 5, rows)  # 1 (basic) .. 4 (platinum)
    affected_users = np.round(generator.lognormal(2.0, 1.3, rows)).astype(int) + 1
    product = generator.choice(["billing", "mobile app", "web portal", "api"], rows)
    urgency = (
        2.2 * outage
        + 0.9 * np.log(affected_users)
        + 0.8 * enterprise
        + 0.45 * tier
        + 0.6 * (product == "api")
        + generator.normal(0, 0.6, rows)
    )
    priority = np.where(urgency > 4.6, "high", np.where(urgency > 3.2, "medium", "low"))
    frame = pd.DataFrame(
        {
            "ticket_ref": [f"TCK-{value:06d}" for value in generator.permutation(rows) + 10_000],
            "opened_at": pd.Timestamp("2025-06-01")
            + pd.to_timedelta(generator.integers(0, 86_400 * 120, rows), unit="s"),
            "product": product,
            "customer_tier": tier,
            "is_enterprise": enterprise,
            "outage_reported": outage,
            "affected_users": affected_users,
            "first_reply_hours": np.round(generator.exponential(6, rows), 1),
            "priority": priority,
        }
    )
    frame.loc[generator.random(rows) < 0.05, "first_reply_hours"] = np.nan
    return frame


@pytest.mark.slow
def test_support_tickets_multiclass_from_parquet(prefect_api, loopml_home, project_dir, tmp_path):
    table = support_tickets()
    data = tmp_path / "tickets.parquet"
    table.to_parquet(data, index=False)
    shares = table["priority"].value_counts(normalize=True)
    assert len(shares) == 3 and shares.min() > 0.1

    profile, trained = _init_and_train(data, "priority", "tickets", project_dir)

    assert profile["task"] == "classification"
    assert sorted(profile["classes"]) == ["high", "low", "medium"]
    assert profile["positive_label"] is None
    assert "id-like" in profile["excluded"]["ticket_ref"]
    assert "opened_at" in profile["datetime"]  # dates are features (parts, elapsed days)
    assert {"is_enterprise", "outage_reported", "product"} <= set(profile["categorical"])
    assert {"customer_tier", "affected_users", "first_reply_hours"} <= set(profile["numeric"])

    metrics = trained["test_metrics"]
    # Always answering the majority class scores accuracy = its share and macro F1 < 0.3.
    assert metrics["accuracy"] > shares.max() + 0.2
    assert metrics["f1_macro"] > 0.65
    assert trained["family"] in CLASSIFIER_KINDS
    assert trained["promoted"] is True

    model = mlflow.pyfunc.load_model("models:/tickets@champion")
    urgent = table.head(300).assign(outage_reported=True, affected_users=5_000, customer_tier=4)
    calm = table.head(300).assign(outage_reported=False, affected_users=1, customer_tier=1)
    assert (model.predict(urgent) == "high").mean() > 0.8
    assert (model.predict(calm) == "low").mean() > 0.6


@pytest.mark.slow
def test_loan_defaults_from_parquet_with_a_numeric_imbalanced_target(
    prefect_api, loopml_home, project_dir, tmp_path
):
    table = loan_defaults(rows=2_000)
    data = tmp_path / "loan_applications.parquet"
    table.to_parquet(data, index=False)
    base_rate = table["defaulted"].mean()
    assert 0.05 < base_rate < 0.25  # imbalanced, by construction

    profile, trained = _init_and_train(data, "defaulted", "loans", project_dir)

    assert profile["task"] == "classification"
    assert profile["positive_label"] == 1
    assert "id-like" in profile["excluded"]["application_id"]
    assert "applied_at" in profile["datetime"]  # dates are features (parts, elapsed days)
    assert {"is_self_employed", "has_mortgage", "loan_purpose"} <= set(profile["categorical"])
    assert {"debt_ratio", "late_payments", "credit_score", "region_code", "income"} <= set(
        profile["numeric"]
    )

    metrics = trained["test_metrics"]
    assert metrics["roc_auc"] > 0.8
    assert metrics["pr_auc"] > 2 * base_rate  # a random ranking scores about the base rate
    assert trained["family"] in CLASSIFIER_KINDS
    assert trained["promoted"] is True

    model = mlflow.pyfunc.load_model("models:/loans@champion")
    config = load_config("loans", project_dir)
    assert config.positive_label == 1
    predictions = model.predict(table.head(300))
    assert set(pd.Series(predictions).unique()) <= {0, 1}
    risky = table.head(300).assign(late_payments=6, debt_ratio=1.4, credit_score=520)
    safe = table.head(300).assign(late_payments=0, debt_ratio=0.1, credit_score=800)
    assert model.predict(risky).mean() > 0.7
    assert model.predict(safe).mean() < 0.1


@pytest.mark.slow
def test_loans_with_an_id_column_and_flags_go_round_the_whole_loop(
    prefect_api, loopml_home, project_dir, tmp_path
):
    """init with ``--id-column`` -> train -> score -> label -> retrain, through the CLI.

    Boolean flags come back from the prediction log as text and the retraining table carries no
    id column: the retraining must still validate and register a version.
    """
    table = loan_defaults(rows=1_600, seed=5)
    history, later = table.iloc[:1_200], table.iloc[1_200:]
    data = tmp_path / "loans.csv"
    history.to_csv(data, index=False)
    batch = tmp_path / "batch.csv"
    later.drop(columns="defaulted").to_csv(batch, index=False)
    labels = tmp_path / "labels.csv"
    later[["application_id", "defaulted"]].to_csv(labels, index=False)

    init = run_cli(
        "init", str(data), "--target", "defaulted", "--name", "loanloop",
        "--id-column", "application_id", "--json", cwd=project_dir,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert last_json(init.stdout)["excluded"]["application_id"] == "the id column"
    for command in (
        ("train", "loanloop", "--trials", "2"),
        ("score", "loanloop", "--data", str(batch), "--out", str(tmp_path / "scored.csv")),
        ("label", "loanloop", "--data", str(labels)),
    ):
        result = run_cli(*command, "--json", cwd=project_dir)
        assert result.returncode == 0, (command, result.stderr)
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert list(scored["row_id"]) == list(later["application_id"])

    retrained = run_cli("retrain", "loanloop", "--trials", "2", "--json", cwd=project_dir)

    assert retrained.returncode == 0, retrained.stderr
    result = last_json(retrained.stdout)
    assert result["version"] == "2" and result["skipped"] is False
    assert result["training_rows"] > len(history) * 0.7  # the reference plus the labelled window
    version = mlflow.MlflowClient().get_model_version("loanloop", "2")
    assert version.tags["loopml.parent_version"] == "1"


@pytest.mark.slow
def test_house_prices_from_a_sql_query_train_without_a_file(
    prefect_api, loopml_home, project_dir, tmp_path, monkeypatch
):
    """``init --sql QUERY --db URL``; ``train`` then reads the same query itself, with the
    database URL's variables taken from the environment at run time."""
    import sqlite3

    table = house_prices(rows=1_200)
    with sqlite3.connect(tmp_path / "warehouse.db") as connection:
        table.to_sql("house_sales", connection, index=False)
    monkeypatch.setenv("WAREHOUSE_DIR", str(tmp_path))
    url = "sqlite:///${WAREHOUSE_DIR}/warehouse.db"
    query = "SELECT * FROM house_sales WHERE sale_price > 0"

    init = run_cli(
        "init", "--sql", query, "--db", url, "--target", "sale_price", "--name", "warehouse",
        "--json", cwd=project_dir,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    train = run_cli("train", "warehouse", "--trials", str(TRIALS), "--json", cwd=project_dir)

    assert train.returncode == 0, train.stderr
    trained = last_json(train.stdout)
    assert trained["version"] == "1" and trained["promoted"] is True
    assert trained["test_metrics"]["r2"] > 0.6
    assert load_config("warehouse", project_dir).sql_url == url  # no path baked into the config
