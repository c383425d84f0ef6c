"""Model families, pipelines and the Optuna search, on small synthetic tables."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import skops.io
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from loopml.config import ParamRange, ProjectConfig
from loopml.errors import ConfigError, DataError
from loopml.evaluation import evaluate
from loopml.modeling import CategoryText, build_pipeline, default_families, skops_trusted_types
from loopml.search.fit import fit_best, out_of_fold_scores
from loopml.search.result import SearchResult
from loopml.search.spaces import suggest_params
from loopml.search.study import run_search

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def one_native_thread():
    # The test machine is shared: HGB's OpenMP threads crawl when the cores are oversubscribed.
    with threadpool_limits(limits=1):
        yield


def make_config(
    numeric: list[str],
    categorical: list[str],
    *,
    task: str = "classification",
    positive_label=1,
    classes=None,
    **search,
) -> ProjectConfig:
    return ProjectConfig(
        name="synthetic",
        data="memory",
        target="y",
        task=task,
        positive_label=positive_label if task == "classification" and not classes else None,
        classes=classes,
        columns={"numeric": numeric, "categorical": categorical},
        split={"cv_folds": 3, "random_state": 7},
        search={"timeout_seconds": None, **search},
    )


def linear_table(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Additive, linear log-odds over many features: a logistic model is the true model."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, 12))
    weights = np.linspace(-1.0, 1.0, 12) + 0.15
    probability = 1 / (1 + np.exp(-(values @ weights)))
    frame = pd.DataFrame(values, columns=[f"x{i}" for i in range(12)])
    return frame, pd.Series((rng.random(rows) < probability).astype(int), name="y")


def interaction_table(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A threshold XOR with a categorical switch: no linear signal at all."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.uniform(-1, 1, rows),
            "b": rng.uniform(-1, 1, rows),
            "noise": rng.normal(size=rows),
            "group": rng.choice(["red", "blue"], rows),
        }
    )
    xor = (frame["a"] > 0) ^ (frame["b"] > 0)
    label = np.where(frame["group"] == "red", xor, ~xor)
    flipped = rng.random(rows) < 0.05
    return frame, pd.Series(np.where(flipped, ~label, label).astype(int), name="y")


def mixed_categorical_table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.normal(100, 20, rows),
            "flag": rng.random(rows) < 0.5,  # bool
            "level": rng.integers(1, 4, rows),  # int
            "city": rng.choice(["Oslo", "Lima", "Pune", None], rows).astype(object),  # NaN
            "plan": pd.Categorical(rng.choice(["basic", "pro"], rows)),
        }
    )
    frame.loc[frame.sample(frac=0.1, random_state=seed).index, "amount"] = np.nan
    return frame


MIXED_NUMERIC = ["amount"]
MIXED_CATEGORICAL = ["flag", "level", "city", "plan"]


def mixed_target(frame: pd.DataFrame) -> pd.Series:
    score = (frame["city"] == "Oslo").astype(int) + frame["flag"].astype(int)
    return pd.Series(np.where(score + (frame["level"] == 3) >= 2, "Yes", "No"), name="y")


def test_default_families_per_task():
    assert default_families("classification") == [
        "logistic",
        "hist_gradient_boosting",
        "random_forest",
        "logistic_spline",
    ]
    assert default_families("regression") == [
        "ridge",
        "hist_gradient_boosting",
        "random_forest",
        "ridge_spline",
    ]
    with pytest.raises(ConfigError):
        default_families("ranking")


@pytest.mark.parametrize(
    "family", ["logistic", "hist_gradient_boosting", "random_forest", "logistic_spline"]
)
def test_pipeline_handles_mixed_dtypes_missing_and_unseen_categories(family):
    train = mixed_categorical_table(400)
    pipeline = build_pipeline(
        family,
        {},
        numeric_columns=MIXED_NUMERIC,
        categorical_columns=MIXED_CATEGORICAL,
        task="classification",
        random_state=0,
    )
    assert [name for name, _ in pipeline.steps] == ["preprocess", "model"]
    pipeline.fit(train, mixed_target(train))

    fresh = mixed_categorical_table(50, seed=1)
    fresh["city"] = fresh["city"].replace({"Lima": "Quito"})  # never seen in training
    fresh["level"] = fresh["level"].where(fresh.index % 7 != 0, 99)  # unseen integer
    fresh["plan"] = fresh["plan"].astype(str)  # category dtype at training, object now
    fresh.loc[0, "amount"] = np.nan
    fresh.loc[1, "flag"] = None  # bool column becomes object with a null
    probabilities = pipeline.predict_proba(fresh)
    assert probabilities.shape == (50, 2)
    assert np.isfinite(probabilities).all()


def test_same_category_in_other_dtypes_gives_same_prediction():
    train = mixed_categorical_table(400)
    pipeline = build_pipeline(
        "hist_gradient_boosting",
        {},
        numeric_columns=MIXED_NUMERIC,
        categorical_columns=MIXED_CATEGORICAL,
        task="classification",
        random_state=0,
    ).fit(train, mixed_target(train))
    batch = train.head(30).copy()
    as_text = batch.copy()
    as_text["flag"] = as_text["flag"].astype(str)  # "True"/"False" read back from CSV
    as_text["level"] = as_text["level"].astype(float).astype(str)  # "2.0": int column with nulls
    as_text["plan"] = as_text["plan"].astype(object)
    np.testing.assert_allclose(pipeline.predict_proba(batch), pipeline.predict_proba(as_text))


def test_category_text_canonical_values():
    frame = pd.DataFrame(
        {"mixed": [True, "True", 1, 1.0, "1.0", None, np.nan, " Yes", 2.5]}, dtype=object
    )
    texts = CategoryText().fit(frame).transform(frame)[:, 0].tolist()
    assert texts == ["True", "True", "1", "1", "1", "__missing__", "__missing__", "Yes", "2.5"]


def test_params_accept_plain_and_pipeline_names_and_json_floats():
    pipeline = build_pipeline(
        "random_forest",
        {"n_estimators": 30.0, "model__min_samples_leaf": 3},
        numeric_columns=["x"],
        categorical_columns=[],
        task="regression",
    )
    assert pipeline.get_params()["model__n_estimators"] == 30
    assert isinstance(pipeline.get_params()["model__n_estimators"], int)
    assert pipeline.get_params()["model__min_samples_leaf"] == 3
    with pytest.raises(ConfigError):
        build_pipeline(
            "ridge", {}, numeric_columns=["x"], categorical_columns=[], task="classification"
        )


@pytest.mark.parametrize(
    "family", ["logistic", "hist_gradient_boosting", "random_forest", "logistic_spline"]
)
def test_skops_round_trip_predicts_identically(family):
    train = mixed_categorical_table(300)
    pipeline = build_pipeline(
        family,
        {},
        numeric_columns=MIXED_NUMERIC,
        categorical_columns=MIXED_CATEGORICAL,
        task="classification",
        random_state=0,
    ).fit(train, mixed_target(train))
    payload = skops.io.dumps(pipeline)
    trusted = skops_trusted_types(pipeline)
    assert "loopml.modeling.CategoryText" in trusted
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException):
        skops.io.loads(payload)
    restored = skops.io.loads(payload, trusted=trusted)
    np.testing.assert_array_equal(restored.predict_proba(train), pipeline.predict_proba(train))


def test_suggest_params_uses_overrides_and_namespaces_by_family():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = suggest_params(
        trial,
        "random_forest",
        {
            "n_estimators": ParamRange(low=10, high=12, integer=True),
            "max_samples": ParamRange(low=0.5, high=0.6),
        },
    )
    assert 10 <= params["n_estimators"] <= 12
    assert 0.5 <= params["max_samples"] <= 0.6
    assert "min_samples_leaf" in params  # default ranges stay for what is not overridden
    assert "random_forest__n_estimators" in trial.params


def test_search_picks_linear_family_on_linear_table():
    features, target = linear_table(1500)
    config = make_config(list(features.columns), [], trials=6)
    result = run_search(features, target, config, storage=None, study_name="linear")
    assert result.best_family == "logistic"
    assert set(result.per_family_best) == {
        "logistic",
        "hist_gradient_boosting",
        "random_forest",
        "logistic_spline",
    }
    assert result.direction == "maximize" and result.metric == "roc_auc"
    assert result.best_cv_score == max(result.per_family_best.values())
    assert "family" not in result.best_params and "C" in result.best_params


def test_search_picks_trees_on_interactions_and_prunes():
    features, target = interaction_table(1200)
    config = make_config(["a", "b", "noise"], ["group"], trials=16)
    seen: list[dict] = []
    result = run_search(
        features, target, config, storage=None, study_name="xor", on_trial=seen.append
    )
    assert result.best_family in {"hist_gradient_boosting", "random_forest"}
    assert result.per_family_best["logistic"] < 0.65 < result.best_cv_score
    assert result.n_pruned > 0
    blending = [info for info in seen if info["family"] == "ensemble"]
    seen = [info for info in seen if info["family"] != "ensemble"]
    assert len(blending) <= 1 and all(info["number"] is None for info in blending)
    assert result.n_trials == 16 == len(seen) == len(result.trials)
    assert [info["family"] for info in seen[:3]] == [
        "logistic",
        "hist_gradient_boosting",
        "random_forest",
    ]
    assert {"number", "family", "value", "state", "elapsed", "search_elapsed"} <= set(seen[0])
    assert set(result.trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}

    model = fit_best(features, target, result, config)
    fresh_features, fresh_target = interaction_table(400, seed=5)
    assert evaluate(model, fresh_features, fresh_target, config)["roc_auc"] > 0.85


def test_regression_search_minimises_rmse():
    rng = np.random.default_rng(3)
    features = pd.DataFrame(rng.normal(size=(600, 5)), columns=list("abcde"))
    features["shop"] = rng.choice(["n", "s", "e"], 600)
    target = pd.Series(
        3 * features["a"]
        - 2 * features["b"]
        + (features["shop"] == "n") * 4
        + rng.normal(0, 0.3, 600)
    )
    config = make_config(list("abcde"), ["shop"], task="regression", trials=4)
    result = run_search(features, target, config, storage=None, study_name="regression")
    assert result.metric == "rmse" and result.direction == "minimize"
    assert result.best_family == "ridge"
    assert result.best_cv_score == min(result.per_family_best.values())
    assert result.best_cv_score < 0.5  # noise sd is 0.3: the linear model finds the structure


def test_multiclass_search_uses_raw_labels():
    rng = np.random.default_rng(4)
    features = pd.DataFrame(rng.normal(size=(600, 4)), columns=list("abcd"))
    scores = np.column_stack([features["a"], features["b"], -features["a"] - features["b"]])
    target = pd.Series(np.array(["low", "mid", "high"])[scores.argmax(axis=1)])
    config = make_config(list("abcd"), [], classes=["low", "mid", "high"], trials=3)
    result = run_search(features, target, config, storage=None, study_name="multi")
    assert result.metric == "f1_macro"
    assert result.best_cv_score > 0.8
    model = fit_best(features, target, result, config)
    assert set(model.predict(features)) <= {"low", "mid", "high"}


def test_study_persists_in_sqlite_and_resumes(tmp_path):
    features, target = linear_table(300)
    config = make_config(
        list(features.columns),
        [],
        families=["logistic", "random_forest"],
        spaces={"random_forest": {"n_estimators": {"low": 10, "high": 20, "integer": True}}},
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    first = run_search(features, target, config, storage=storage, study_name="p", n_trials=3)
    assert first.n_trials == 3
    resumed = run_search(features, target, config, storage=storage, study_name="p", n_trials=5)
    assert resumed.n_trials == 5  # topped up: two new trials, the first three kept
    assert resumed.trials["number"].tolist() == [0, 1, 2, 3, 4]
    assert first.trials["value"].tolist() == resumed.trials["value"].head(3).tolist()
    # The enqueued default trials are not queued again on resume.
    assert resumed.trials["params"].map(lambda params: params == {"C": 1.0}).sum() == 1
    stored = optuna.load_study(study_name="p", storage=storage)
    assert len(stored.trials) == 5
    assert set(resumed.per_family_best) == {"logistic", "random_forest"}


def test_search_subsamples_rows_and_checks_inputs():
    features, target = linear_table(800)
    config = make_config(
        list(features.columns), [], families=["logistic"], trials=1, max_training_rows=300
    )
    result = run_search(features, target, config, storage=None, study_name="cap")
    assert isinstance(result, SearchResult) and result.rows_searched == 300
    with pytest.raises(DataError, match="missing value"):
        run_search(
            features,
            target.astype(float).where(target.index > 0),
            config,
            storage=None,
            study_name="nan",
        )
    with pytest.raises(ConfigError):
        run_search(
            features,
            target,
            make_config(list(features.columns), [], families=["ridge"]),
            storage=None,
            study_name="bad",
        )


def test_out_of_fold_scores_are_honest_probabilities():
    features, target = linear_table(600)
    labels = target.map({1: "churned", 0: "stayed"})
    config = make_config(
        list(features.columns), [], positive_label="churned", families=["logistic"]
    )
    pipeline = build_pipeline(
        "logistic",
        {},
        numeric_columns=list(features.columns),
        categorical_columns=[],
        task="classification",
    )
    scores = out_of_fold_scores(pipeline, features, labels, config)
    assert scores.shape == (600,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(labels == "churned", scores) > 0.8  # positive class, not the other one
