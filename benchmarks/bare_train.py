"""The training work of ``loopml train`` done bare: pandas + scikit-learn + Optuna, nothing else.

No loopml, Prefect or MLflow: the baseline that ``loopml train`` is timed against. Same work as
the search there: a stratified 80/20 hold-out split, an Optuna study (seeded TPE, median
pruner, one enqueued default trial per family) over logistic regression (plain, and with a cubic
spline basis of each numeric column as loopml's ``logistic_spline``), histogram gradient
boosting and random forests with the same preprocessing and ranges, 3-fold CV with per-fold
pruning, then the best pipeline fitted on the training rows and scored on the hold-out.

    python benchmarks/bare_train.py --data loopml/data/telco_churn.csv --target churn --trials 24
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, SplineTransformer, StandardScaler

FAMILIES = ("logistic", "hist_gradient_boosting", "random_forest", "logistic_spline")
# (low, high, log, integer), as loopml's default search spaces.
SPACES = {
    "logistic": {"C": (1e-3, 100.0, True, False)},
    "logistic_spline": {"C": (1e-3, 100.0, True, False)},
    "hist_gradient_boosting": {
        "learning_rate": (0.01, 0.3, True, False),
        "max_iter": (50, 300, True, True),
        "max_leaf_nodes": (8, 64, True, True),
        "min_samples_leaf": (5, 100, True, True),
        "l2_regularization": (1e-4, 10.0, True, False),
    },
    "random_forest": {
        "n_estimators": (50, 250, False, True),
        "max_depth": (4, 24, False, True),
        "min_samples_leaf": (1, 20, True, True),
        "max_features": (0.2, 1.0, False, False),
    },
}
DEFAULTS = {
    "logistic": {"C": 1.0},
    "logistic_spline": {"C": 1.0},
    "hist_gradient_boosting": {
        "learning_rate": 0.1,
        "max_iter": 100,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
        "l2_regularization": 1e-3,
    },
    "random_forest": {
        "n_estimators": 100,
        "max_depth": 16,
        "min_samples_leaf": 1,
        "max_features": 0.5,
    },
}


class AppendSplines(TransformerMixin, BaseEstimator):
    """Each (imputed, scaled) numeric column, plus a cubic B-spline basis (5 quantile knots) of
    those with more than 10 distinct values."""

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=float)
        self.columns_ = [j for j in range(X.shape[1]) if len(np.unique(X[:, j])) > 10]
        self.splines_ = None
        if self.columns_:
            self.splines_ = SplineTransformer(
                n_knots=5, knots="quantile", extrapolation="linear", include_bias=False
            ).fit(X[:, self.columns_])
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        if self.splines_ is None:
            return X
        return np.hstack([X, self.splines_.transform(X[:, self.columns_])])


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as strings with one 'missing' category."""
    return frame.astype(str).where(frame.notna(), "__missing__")


def make_pipeline(family: str, params: dict, numeric: list[str], categorical: list[str], seed: int):
    if family in ("logistic", "logistic_spline"):
        categorical_steps = OneHotEncoder(
            handle_unknown="infrequent_if_exist", min_frequency=5, max_categories=50
        )
        numeric_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                ("scale", StandardScaler()),
                *([("splines", AppendSplines())] if family == "logistic_spline" else []),
            ]
        )
        model = LogisticRegression(max_iter=1000, random_state=seed, **params)
    else:
        categorical_steps = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            encoded_missing_value=-1,
            max_categories=250,
        )
        numeric_steps = "passthrough"
        if family == "hist_gradient_boosting":
            model = HistGradientBoostingClassifier(
                categorical_features=list(range(len(categorical))) or None,
                random_state=seed,
                **params,
            )
        else:
            model = RandomForestClassifier(n_jobs=1, random_state=seed, **params)
    preprocess = ColumnTransformer(
        [("categorical", categorical_steps, categorical), ("numeric", numeric_steps, numeric)]
    )
    return Pipeline([("preprocess", preprocess), ("model", model)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--positive-label", default=None, help="default: the minority class")
    parser.add_argument("--cv-folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    started = time.perf_counter()
    frame = pd.read_csv(args.data, low_memory=False)
    target = frame.pop(args.target)
    positive = args.positive_label or target.value_counts().idxmin()
    target = target.astype(str) == str(positive)
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    numeric = [c for c in frame.columns if c not in categorical]
    frame[categorical] = as_text(frame[categorical])
    train_x, test_x, train_y, test_y = train_test_split(
        frame, target, test_size=0.2, stratify=target, random_state=args.seed
    )
    folds = list(
        StratifiedKFold(args.cv_folds, shuffle=True, random_state=args.seed).split(train_x, train_y)
    )

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", FAMILIES)
        params = {}
        for name, (low, high, log, integer) in SPACES[family].items():
            key = f"{family}__{name}"
            if integer:
                params[name] = trial.suggest_int(key, int(low), int(high), log=log)
            else:
                params[name] = trial.suggest_float(key, low, high, log=log)
        pipeline = make_pipeline(family, params, numeric, categorical, args.seed)
        scores = []
        for step, (fit_rows, valid_rows) in enumerate(folds):
            model = clone(pipeline).fit(train_x.iloc[fit_rows], train_y.iloc[fit_rows])
            probability = model.predict_proba(train_x.iloc[valid_rows])[:, 1]
            scores.append(roc_auc_score(train_y.iloc[valid_rows], probability))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=len(FAMILIES)),
    )
    for family in FAMILIES:
        study.enqueue_trial(
            {"family": family, **{f"{family}__{k}": v for k, v in DEFAULTS[family].items()}}
        )
    study.optimize(objective, n_trials=args.trials)
    searched = time.perf_counter()

    best = dict(study.best_params)
    family = best.pop("family")
    params = {key.split("__", 1)[1]: value for key, value in best.items()}
    model = make_pipeline(family, params, numeric, categorical, args.seed).fit(train_x, train_y)
    fitted = time.perf_counter()
    probability = model.predict_proba(test_x)[:, 1]
    predicted = probability >= 0.5
    metrics = {
        "roc_auc": roc_auc_score(test_y, probability),
        "accuracy": accuracy_score(test_y, predicted),
        "f1": f1_score(test_y, predicted),
    }
    finished = time.perf_counter()
    states = [trial.state.name for trial in study.trials]
    print(
        json.dumps(
            {
                "best_family": family,
                "best_cv_roc_auc": round(study.best_value, 4),
                "trials": len(states),
                "pruned": states.count("PRUNED"),
                "holdout": {name: round(float(value), 4) for name, value in metrics.items()},
                "search_seconds": round(searched - started, 2),
                "fit_seconds": round(fitted - searched, 2),
                "seconds": round(finished - started, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
