"""How much better the default search's champion is than the best single family, and at what cost.

For each table (the Telco sample, tables scikit-learn ships and three real survey tables statsmodels
ships, ``fair``, ``anes96`` and ``randhie``: nothing is downloaded), the
default search (:func:`loopml.search.study.run_search`, config as ``loopml init`` would write it)
picks a champion on every row; then the champion (cloned and refit per fold) and the
best-of-family baseline are scored by the same outer 5-fold cross-validation.

The baseline is today's search space at its defaults, built by the pre-issue-16 code (read from
git, ``--baseline-ref``): logistic/ridge, HistGradientBoosting and random forest pipelines with
their default parameters, and the best of the three *by the outer folds themselves* (a baseline
that peeks: the gain shown is a lower bound). The champion's parameters were chosen by the
search on all rows, as ``loopml train`` does; the outer folds judge the pipeline, not the
search (the same method as the issue's outside check).

Training wall time: the new search (trials, blending and the final refit) against the
baseline-ref's own search (``run_search`` + ``fit_best`` at the same config), both in this
process with the same thread cap.

Metrics: ROC-AUC for classification (one-vs-rest macro average for multiclass), RMSE for
regression. Targets (issue 16): mean AUC gain >= +0.005, RMSE ratio <= 0.95, no table worse by
more than 0.002 AUC / 1 % RMSE, wall time within 1.5x.

Usage::

    python benchmarks/quality_benchmark.py [--tables telco,breast_cancer,...] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import optuna
import pandas as pd
from sklearn import datasets
from sklearn.base import clone
from sklearn.metrics import roc_auc_score, root_mean_squared_error
from sklearn.model_selection import KFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from loopml.config import ColumnsConfig, ProjectConfig
from loopml.features import prepare_features, prepare_target
from loopml.profiling import infer_profile
from loopml.search.fit import best_pipeline, fit_best
from loopml.search.study import run_search

REPO = Path(__file__).resolve().parents[1]
OUTER_FOLDS = 5
TABLES = ("telco", "breast_cancer", "wine", "digits", "diabetes", "fair", "anes96", "randhie")
REGRESSION_TABLES = frozenset({"diabetes", "randhie"})


def load_table(name: str) -> tuple[pd.DataFrame, str]:
    """A table and its target column; all bundled with the repo, scikit-learn or statsmodels."""
    if name == "telco":
        return pd.read_csv(REPO / "loopml" / "data" / "telco_churn.csv"), "churn"
    if name == "fair":
        # Fair (1978) affairs survey, 6,366 women: whether any extramarital affair was reported.
        from statsmodels.datasets import fair

        frame = fair.load_pandas().data
        frame["had_affair"] = np.where(frame.pop("affairs") > 0, "yes", "no")
        return frame, "had_affair"
    if name == "anes96":
        # 1996 American National Election Study, 944 voters: Clinton (0) or Dole (1).
        from statsmodels.datasets import anes96

        return anes96.load_pandas().data, "vote"
    if name == "randhie":
        # RAND Health Insurance Experiment, 20,190 person-years: outpatient doctor visits.
        from statsmodels.datasets import randhie

        return randhie.load_pandas().data, "mdvis"
    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }[name]
    frame = loader(as_frame=True).frame
    return frame, "target"


def project_config(frame: pd.DataFrame, target: str, name: str) -> ProjectConfig:
    """The config ``loopml init`` would write for the table (defaults everywhere else)."""
    task = "regression" if name in REGRESSION_TABLES else None
    profile = infer_profile(frame, target, task=task)
    return ProjectConfig(
        name=name,
        data="memory",
        target=target,
        task=profile.task,
        positive_label=profile.positive_label,
        classes=profile.classes,
        columns=ColumnsConfig(
            numeric=profile.numeric,
            categorical=profile.categorical,
            datetime=profile.datetime,
            excluded=profile.excluded,
        ),
    )


def baseline_module(ref: str) -> ModuleType:
    """``loopml/modeling.py`` as of ``ref``, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:loopml/modeling.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # The names it imported from loopml.evaluation have moved since: bind them to their homes.
    old_imports = (
        "from loopml.evaluation import (\n    check_metric,\n    compute_metrics,\n"
        "    metric_direction,\n    positive_class_index,\n)\n"
    )
    if old_imports in source:
        source = source.replace(
            old_imports,
            "from loopml.evaluation import check_metric, compute_metrics\n"
            "from loopml.label_rule import label_index as positive_class_index\n"
            "from loopml.metrics import metric_direction\n",
        )
    path = Path(tempfile.mkdtemp()) / "baseline_modeling.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_modeling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def outer_score(estimator, features, target, config, folds) -> float:
    """Mean outer-fold ROC-AUC (classification) or RMSE (regression) of a cloned estimator."""
    scores = []
    for train_rows, test_rows in folds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = clone(estimator).fit(features.iloc[train_rows], target.iloc[train_rows])
        test_features, test_target = features.iloc[test_rows], target.iloc[test_rows]
        if config.task == "regression":
            scores.append(root_mean_squared_error(test_target, fitted.predict(test_features)))
            continue
        probabilities = fitted.predict_proba(test_features)
        if config.is_binary:
            positive = list(fitted.classes_).index(config.positive_label)
            actual = (test_target == config.positive_label).to_numpy()
            scores.append(roc_auc_score(actual, probabilities[:, positive]))
        else:
            scores.append(
                roc_auc_score(
                    test_target, probabilities, multi_class="ovr", labels=list(fitted.classes_)
                )
            )
    return float(np.mean(scores))


def timed_search(search, fit_best, features, target, config) -> tuple[float, object, object]:
    """Seconds of ``search`` (a ``run_search``) and ``fit_best``, with both results."""
    started = time.perf_counter()
    result = search(features, target, config, storage=None, study_name="bench")
    model = fit_best(features, target, result, config)
    return time.perf_counter() - started, result, model


def run_table(name: str, baseline: ModuleType, threads: int | None) -> dict:
    frame, target_column = load_table(name)
    config = project_config(frame, target_column, name)
    features = prepare_features(frame, config)
    target = prepare_target(frame, config)
    splitter = (
        KFold(OUTER_FOLDS, shuffle=True, random_state=0)
        if config.task == "regression"
        else StratifiedKFold(OUTER_FOLDS, shuffle=True, random_state=0)
    )
    folds = list(splitter.split(features, target))
    with threadpool_limits(limits=threads):
        new_seconds, result, _ = timed_search(run_search, fit_best, features, target, config)
        old_seconds, _, _ = timed_search(
            baseline.run_search, baseline.fit_best, features, target, config
        )
        champion = best_pipeline(result, config)
        champion_score = outer_score(champion, features, target, config, folds)
        family_scores = {
            family: outer_score(
                baseline.build_pipeline(
                    family,
                    baseline.DEFAULT_PARAMS[family],
                    numeric_columns=config.columns.numeric,
                    categorical_columns=config.columns.categorical,
                    task=config.task,
                    random_state=config.split.random_state,
                ),
                features,
                target,
                config,
                folds,
            )
            for family in baseline.default_families(config.task)
        }
    pick = min if config.task == "regression" else max
    baseline_family = pick(family_scores, key=family_scores.get)
    return {
        "table": name,
        "rows": len(frame),
        "task": "regression"
        if config.task == "regression"
        else ("binary" if config.is_binary else "multiclass"),
        "metric": "rmse" if config.task == "regression" else "roc_auc",
        "baseline_family": baseline_family,
        "baseline": family_scores[baseline_family],
        "champion_kind": result.champion_family,
        "champion": champion_score,
        "search_seconds": new_seconds,
        "baseline_search_seconds": old_seconds,
        "trials": result.n_trials,
    }


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (floats to 4 decimals, times to 1), without extra packages."""

    def cell(column: str, value: object) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if column.endswith("seconds") else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--threads", type=int, default=None, help="native thread cap")
    parser.add_argument(
        "--baseline-ref", default="d58402c", help="git revision of the best-of-family code"
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    baseline = baseline_module(args.baseline_ref)
    rows = []
    for name in args.tables.split(","):
        row = run_table(name, baseline, args.threads)
        rows.append(row)
        print(row, flush=True, file=sys.stderr)
    table = pd.DataFrame(rows)
    classification = table[table["metric"] == "roc_auc"]
    regression = table[table["metric"] == "rmse"]
    table["change"] = np.where(
        table["metric"] == "rmse",
        table["champion"] / table["baseline"],
        table["champion"] - table["baseline"],
    )
    table["time_ratio"] = table["search_seconds"] / table["baseline_search_seconds"]
    print(f"# quality benchmark, {dt.date.today().isoformat()}, {OUTER_FOLDS}-fold outer CV")
    print(markdown(table))
    if len(classification):
        gains = classification["champion"] - classification["baseline"]
        print(f"mean ROC-AUC gain: {gains.mean():+.4f} (worst {gains.min():+.4f})")
    if len(regression):
        ratios = regression["champion"] / regression["baseline"]
        print(f"RMSE ratio: mean {ratios.mean():.3f}x (worst {ratios.max():.3f}x)")
    print(
        f"wall time: {table['search_seconds'].sum():.0f}s vs "
        f"{table['baseline_search_seconds'].sum():.0f}s "
        f"({table['search_seconds'].sum() / table['baseline_search_seconds'].sum():.2f}x)"
    )


if __name__ == "__main__":
    main()
