"""Error analysis by slice, the fairness audit and the fairness gate, on planted data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from loopml.config import (
    ColumnsConfig,
    FairnessGateConfig,
    ProjectConfig,
    config_path,
    load_config,
)
from loopml.errors import ConfigError, DataError
from loopml.fairness import (
    audit_fairness,
    check_fairness,
    propose_sensitive_columns,
    with_fairness_gate,
)
from loopml.gate import decide_promotion
from loopml.slices import analyse_slices
from tests.conftest import SAMPLE


def binary_config(**extra) -> ProjectConfig:
    return ProjectConfig(
        name="churn",
        data="x.csv",
        target="churn",
        task="classification",
        positive_label="Yes",
        columns=ColumnsConfig(
            numeric=["female", "senior_citizen", "tenure"],
            categorical=["contract", "region"],
        ),
        **extra,
    )


def test_a_slice_planted_with_worse_labels_comes_first_and_a_tiny_one_is_not_ranked() -> None:
    generator = np.random.default_rng(0)
    rows = 2_000
    frame = pd.DataFrame(
        {
            "female": generator.integers(0, 2, rows),
            "senior_citizen": generator.integers(0, 2, rows),
            "tenure": generator.integers(0, 72, rows),
            "contract": generator.choice(["Month-to-month", "One year", "Two year"], rows),
            "region": generator.choice(["north", "south", "east", "west"], rows),
        }
    )
    frame.loc[:11, "region"] = "island"  # 12 rows: shown, not ranked
    truth = generator.choice(["Yes", "No"], rows)
    predicted = truth.copy()
    wrong = generator.random(rows) < 0.1  # 90% right overall ...
    east = (frame["region"] == "east").to_numpy()
    wrong |= east & (generator.random(rows) < 0.35)  # ... but much worse in the east
    wrong[:12] = True  # the tiny island slice is all wrong: too few rows to rank
    predicted[wrong] = np.where(truth[wrong] == "Yes", "No", "Yes")

    analysis = analyse_slices(frame, truth, predicted, binary_config())

    first = analysis["slices"][0]
    assert (first["column"], first["slice"]) == ("region", "east")
    assert first["worse_with_confidence"] and first["high"] < analysis["overall"]
    assert analysis["metric"] == "accuracy"
    island = [row for row in analysis["slices"] if row["slice"] == "island"]
    assert island and island[0]["rows"] == 12 and not island[0]["ranked"]
    assert analysis["slices"][-1]["slice"] == "island"  # listed after every ranked slice
    banded = {row["slice"] for row in analysis["slices"] if row["column"] == "tenure"}
    assert len(banded) == 4  # a numeric column with many values is cut into quartile bands


@pytest.fixture(scope="module")
def telco_audit_rows() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Telco rows with a deterministic rule's predictions (month-to-month and short tenure)."""
    frame = pd.read_csv(SAMPLE).sample(1_500, random_state=11).reset_index(drop=True)
    predicted = np.where(
        (frame["contract"] == "Month-to-month") & (frame["tenure"] < 24), "Yes", "No"
    )
    return frame, frame["churn"].to_numpy(), predicted


def test_the_fairness_audit_on_female_and_senior_citizen_matches_a_hand_calculation(
    telco_audit_rows,
) -> None:
    frame, truth, predicted = telco_audit_rows
    config = binary_config(sensitive_columns=["female", "senior_citizen"])

    audit = audit_fairness(frame, truth, predicted, config)

    for column in ("female", "senior_citizen"):
        hand = pd.DataFrame(
            {
                "group": frame[column].astype(str),
                "flagged": predicted == "Yes",
                "positive": truth == "Yes",
            }
        )
        selection = hand.groupby("group")["flagged"].mean()
        tpr = hand[hand["positive"]].groupby("group")["flagged"].mean()
        fpr = hand[~hand["positive"]].groupby("group")["flagged"].mean()
        groups = {row["group"]: row for row in audit["columns"][column]["groups"]}
        assert set(groups) == {"0", "1"}
        for group in ("0", "1"):
            assert groups[group]["count"] == (hand["group"] == group).sum()
            assert groups[group]["selection_rate"] == pytest.approx(selection[group])
            assert groups[group]["true_positive_rate"] == pytest.approx(tpr[group])
            assert groups[group]["false_positive_rate"] == pytest.approx(fpr[group])
        differences = audit["columns"][column]["differences"]
        assert differences["demographic_parity_difference"] == pytest.approx(
            selection.max() - selection.min()
        )
        assert differences["equalized_odds_difference"] == pytest.approx(
            max(tpr.max() - tpr.min(), fpr.max() - fpr.min())
        )


def test_the_fairness_gate_refuses_a_planted_biased_challenger(telco_audit_rows) -> None:
    frame, truth, fair = telco_audit_rows
    config = binary_config(sensitive_columns=["female", "senior_citizen"])
    biased = fair.copy()
    biased[frame["senior_citizen"].to_numpy() == 1] = "Yes"  # every senior flagged
    rule = FairnessGateConfig(metric="demographic_parity_difference", max_increase=0.05)
    champion_audit = audit_fairness(frame, truth, fair, config)
    passed_metrics = decide_promotion(0.85, 0.80, metric="roc_auc", min_improvement=0.0)
    assert passed_metrics.promote

    refused = with_fairness_gate(
        passed_metrics,
        check_fairness(audit_fairness(frame, truth, biased, config), champion_audit, rule),
    )
    kept = with_fairness_gate(
        passed_metrics,
        check_fairness(audit_fairness(frame, truth, fair, config), champion_audit, rule),
    )

    assert not refused.promote
    assert "fairness gate refused" in refused.reason and "'senior_citizen'" in refused.reason
    check = refused.to_dict()["comparisons"]["fairness"]  # what the ledger records
    assert check["passed"] is False and check["increase"] > 0.05
    assert kept.promote and kept.comparisons["fairness"]["passed"]


def test_a_sensitive_column_that_does_not_exist_is_one_clear_sentence(tmp_path: Path) -> None:
    config = binary_config().model_dump(mode="json")
    config["sensitive_columns"] = ["gender"]
    path = config_path("churn", tmp_path)
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="'gender' is not a column of the table"):
        load_config("churn", tmp_path)
    frame = pd.DataFrame({"female": [0, 1], "tenure": [1, 2]})
    with pytest.raises(DataError, match="'senior_citizen' are not in the data"):
        audit_fairness(
            frame,
            np.array(["Yes", "No"]),
            np.array(["Yes", "Yes"]),
            binary_config(sensitive_columns=["female", "senior_citizen"]),
        )


def test_init_proposes_columns_named_like_protected_attributes() -> None:
    columns = ["SeniorCitizen", "gender", "age_band", "usage", "page_views", "marital_status"]
    assert propose_sensitive_columns([*columns, "sex"], target="sex") == [
        "SeniorCitizen",
        "gender",
        "age_band",
        "marital_status",
    ]


def test_regression_slices_and_audit_use_the_error_in_the_targets_units() -> None:
    generator = np.random.default_rng(3)
    rows = 1_200
    frame = pd.DataFrame(
        {
            "age": generator.integers(18, 80, rows),
            "region": generator.choice(["north", "south", "east"], rows),
        }
    )
    truth = generator.normal(100, 10, rows)
    error = generator.normal(0, 2, rows)
    error[(frame["region"] == "south").to_numpy()] *= 5  # planted: far worse in the south
    config = ProjectConfig(
        name="spend",
        data="x.csv",
        target="spend",
        task="regression",
        columns=ColumnsConfig(numeric=["age"], categorical=["region"]),
        sensitive_columns=["age"],
    )

    analysis = analyse_slices(frame, truth, truth + error, config)
    audit = audit_fairness(frame, truth, truth + error, config)

    assert analysis["metric"] == "mae" and analysis["direction"] == "minimize"
    assert (analysis["slices"][0]["column"], analysis["slices"][0]["slice"]) == ("region", "south")
    assert analysis["slices"][0]["low"] > analysis["overall"]
    bands = audit["columns"]["age"]["groups"]
    assert len(bands) == 4 and sum(band["count"] for band in bands) == rows  # quartile bands
    maes = [band["mae"] for band in bands]
    assert audit["columns"]["age"]["differences"]["mae_difference"] == pytest.approx(
        max(maes) - min(maes)
    )
