"""The documentation step against a real MLflow registry: the fairness gate compares the
candidate with the registered champion on the same held-out rows and refuses a biased one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loopml import modeling
from loopml.config import FairnessGateConfig, load_config
from loopml.documentation import FAIRNESS_FILE, MODEL_CARD_FILE, SLICES_FILE, document_version
from loopml.features import prepare_features, prepare_target, split_holdout
from loopml.gate import decide_promotion
from loopml.registry import (
    CHAMPION,
    ensure_experiment,
    log_and_register,
    mlflow_client,
    set_alias,
)
from tests.conftest import REPO, SAMPLE

pytestmark = pytest.mark.slow  # registers a model in MLflow (~10 s idle)


class FlagsEverySenior:
    """A planted biased challenger: the champion's pipeline, but every senior citizen flagged."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.classes_ = inner.classes_

    def predict_proba(self, features: pd.DataFrame) -> np.ndarray:
        probabilities = self.inner.predict_proba(features).copy()
        yes = list(self.classes_).index("Yes")
        seniors = features["senior_citizen"].to_numpy() == 1
        probabilities[seniors, yes], probabilities[seniors, 1 - yes] = 1.0, 0.0
        return probabilities


def test_the_fairness_gate_refuses_a_biased_challenger_against_the_registered_champion(
    loopml_home: Path, tmp_path: Path
) -> None:
    config = load_config("telco", REPO)
    config = config.model_copy(
        update={
            "name": "fair_churn",
            "gate": config.gate.model_copy(
                update={"fairness": FairnessGateConfig(max_increase=0.05)}
            ),
        }
    )
    frame = pd.read_csv(SAMPLE).sample(1_200, random_state=4)
    train, test = split_holdout(frame, config)
    features = prepare_features(train, config)
    champion_model = modeling.build_pipeline(
        "logistic",
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task="classification",
        random_state=0,
    ).fit(features, prepare_target(train, config))
    client = mlflow_client(os.environ["MLFLOW_TRACKING_URI"])
    champion = log_and_register(
        client=client,
        experiment_id=ensure_experiment(client, config.name, (loopml_home / "art").as_uri()),
        name=config.name,
        model=champion_model,
        input_example=features.head(20),
        trusted_types=modeling.skops_trusted_types(champion_model),
        params={},
        metrics={},
        run_tags={},
        version_tags={},
        figures={},
        reference_files={},
        run_name="champion",
    )
    set_alias(client, config.name, CHAMPION, champion.version)
    better_metrics = decide_promotion(0.90, 0.80, metric="roc_auc", min_improvement=0.0)

    def document(model, folder: Path):
        folder.mkdir()
        return document_version(
            client=client,
            config=config,
            version="2",
            run_id="candidate-run",
            model=model,
            family="logistic",
            params={},
            train=train,
            test=test,
            test_metrics={"roc_auc": 0.9},
            cv_metrics={},
            search={},
            figures={},
            importances={"tenure": 0.1, "contract": 0.05, "senior_citizen": 0.01},
            data_hash="hash",
            suite_hash="suite",
            decision=better_metrics,
            folder=folder,
        )

    biased = document(FlagsEverySenior(champion_model), tmp_path / "biased")
    same = document(champion_model, tmp_path / "same")

    assert not biased.decision.promote
    check = biased.decision.to_dict()["comparisons"]["fairness"]
    assert check["column"] == "senior_citizen" and check["increase"] > 0.05
    assert "fairness gate refused" in biased.decision.reason
    assert same.decision.promote and same.decision.comparisons["fairness"]["increase"] == 0
    assert {SLICES_FILE, FAIRNESS_FILE, MODEL_CARD_FILE} <= set(biased.files)
    assert "fairness gate refused" in biased.files[MODEL_CARD_FILE].read_text()
