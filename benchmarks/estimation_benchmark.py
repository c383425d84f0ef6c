"""Estimated performance without labels (CBPE / DLE) and the stream detector, measured.

Tables shipped on the machine (no downloads): the Telco sample, statsmodels' ``fair`` (6,366 rows,
binary: any affair), scikit-learn's ``load_breast_cancer`` (569 rows) and ``load_digits``
(1,797 rows, 10 classes), scikit-learn's ``load_diabetes`` (regression, 442 rows) and
statsmodels' ``randhie`` (regression, 20,190 rows). Each table is split 50/20/30 into training
rows, held-out rows (CBPE's calibration / DLE's loss model, as at registration) and a pool that
500-row batches are drawn from (with replacement when the pool is small).

Figures printed:
1. estimated vs realised metric per batch (MAE, interval coverage) on 20-batch streams under
   covariate shift (rows re-weighted by exp(s x key column z-score), s from 0 to 1.5: P(y | x)
   unchanged) and under concept drift (a growing share of labels flipped: CBPE cannot see it),
   beside the noise floor (the mean |realised - expected| a perfect estimator still has on a
   batch of that size, simulated from the calibrated probabilities) and the bias (mean
   estimate - mean realised); ``--splits`` repeats them over random splits;
2. stream detector: false alarms over 100 clean batches (drift from the pool, reference = the
   training rows, exactly as ``loopml monitor`` does with the champion's training data);
3. batches to detection of a slow drift adding 0.05 reference SD per batch to one key column.

    .venv/bin/python benchmarks/estimation_benchmark.py [--batches 20] [--clean 100] [--splits 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loopml import stream
from loopml.config import DriftPolicy, ProjectConfig
from loopml.drift.profile import build_reference_profile
from loopml.drift.verdict import detect_drift
from loopml.estimation.fit import fit_estimator
from loopml.estimation.outputs import model_outputs
from loopml.modeling import build_pipeline
from loopml.monitoring import batch_metrics, batch_outcomes

ROOT = Path(__file__).resolve().parents[1]
BATCH_ROWS = 500


@dataclass
class Table:
    name: str
    frame: pd.DataFrame
    config: ProjectConfig
    key: str  # the column shifted (a numeric, important one)
    family: str = "hist_gradient_boosting"


def _config(name, target, task, numeric, categorical, positive=None, classes=None):
    return ProjectConfig.model_validate(
        {
            "name": name,
            "data": name,
            "target": target,
            "task": task,
            "positive_label": positive,
            "classes": classes,
            "columns": {"numeric": numeric, "categorical": categorical},
        }
    )


def tables() -> list[Table]:
    import statsmodels.api as sm
    import yaml
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

    telco_config = yaml.safe_load((ROOT / "configs" / "telco.yaml").read_text())
    telco = pd.read_csv(ROOT / "loopml" / "data" / "telco_churn.csv")
    columns = telco_config["columns"]
    found = [
        Table(
            "telco",
            telco,
            _config(
                "telco",
                "churn",
                "classification",
                columns["numeric"],
                columns["categorical"],
                "Yes",
            ),
            "tenure",
        )
    ]
    fair = sm.datasets.fair.load_pandas().data
    fair["affair"] = (fair.pop("affairs") > 0).astype(int)
    fair_columns = [c for c in fair.columns if c != "affair"]
    found.append(
        Table(
            "fair",
            fair,
            _config("fair", "affair", "classification", fair_columns, [], 1),
            "yrs_married",
        )
    )
    cancer = load_breast_cancer(as_frame=True).frame
    cancer_columns = [c for c in cancer.columns if c != "target"]
    found.append(
        Table(
            "breast_cancer",
            cancer,
            _config("cancer", "target", "classification", cancer_columns, [], 1),
            "worst radius",
            "logistic",
        )
    )
    digits = load_digits(as_frame=True).frame
    digit_columns = [c for c in digits.columns if c != "target" and digits[c].std() > 0]
    found.append(
        Table(
            "digits (10 classes)",
            digits[[*digit_columns, "target"]],
            _config(
                "digits", "target", "classification", digit_columns, [], classes=list(range(10))
            ),
            "pixel_2_4",
            "logistic",
        )
    )
    diabetes = load_diabetes(as_frame=True).frame
    diabetes_columns = [c for c in diabetes.columns if c != "target"]
    found.append(
        Table(
            "diabetes (regression)",
            diabetes,
            _config("diabetes", "target", "regression", diabetes_columns, []),
            "bmi",
            "ridge",
        )
    )
    randhie = sm.datasets.randhie.load_pandas().data
    randhie_columns = [c for c in randhie.columns if c != "mdvis"]
    found.append(
        Table(
            "randhie (regression)",
            randhie,
            _config("randhie", "mdvis", "regression", randhie_columns, []),
            "disea",
        )
    )
    return found


def split(frame: pd.DataFrame, seed: int = 0):
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    a, b = int(0.5 * len(frame)), int(0.7 * len(frame))
    return shuffled[:a], shuffled[a:b], shuffled[b:].reset_index(drop=True)


def fit_split(table: Table, seed: int):
    """(training rows, held-out rows, pool, model, estimator) of one random split."""
    train, held_out, pool = split(table.frame, seed)
    return (train, held_out, pool, *fit(table, train, held_out))


def stream_summary(rows: np.ndarray) -> str:
    """MAE of estimate vs realised beside what no estimator can remove (the noise floor) and
    what a better one could (the bias: mean estimate - mean realised)."""
    error = np.abs(rows[:, 0] - rows[:, 3])
    covered = np.mean((rows[:, 1] <= rows[:, 3]) & (rows[:, 3] <= rows[:, 2]))
    bias = np.nanmean(rows[:, 0] - rows[:, 3])
    return (
        f"MAE {np.nanmean(error):.4f} (max {np.nanmax(error):.4f}), "
        f"noise floor {np.nanmean(rows[:, 4]):.4f}, bias {bias:+.4f}, "
        f"95% interval holds {covered:.0%}"
    )


def fit(table: Table, train: pd.DataFrame, held_out: pd.DataFrame):
    from loopml.features import prepare_features, prepare_target

    config = table.config
    model = build_pipeline(
        table.family,
        {},
        numeric_columns=config.columns.numeric,
        categorical_columns=config.columns.categorical,
        task=config.task,
        random_state=0,
    )
    model.fit(prepare_features(train, config), prepare_target(train, config))
    features = prepare_features(held_out, config)
    truth = prepare_target(held_out, config)
    outputs = model_outputs(model, features, config)
    realised = realised_metrics(config, truth, outputs)
    estimator = fit_estimator(config, outputs, truth, features, realised)
    return model, estimator


def realised_metrics(config, truth, outputs) -> dict[str, float]:
    probability = None
    if config.is_binary:
        probability = outputs.probabilities[:, outputs.classes.index(config.positive_label)]
    outcomes = batch_outcomes(config, np.asarray(truth), outputs.labels, probability)
    return batch_metrics(outcomes)


def judged_metric(config: ProjectConfig) -> str:
    if config.task == "regression":
        return "mae"
    return "roc_auc" if config.is_binary else "accuracy"


def estimation_stream(table, model, estimator, pool, *, batches, concept: bool, seed=0):
    """(estimated, lower, upper, realised, noise) of the judged metric per batch.

    ``noise`` is the floor no estimator can beat on that batch: the mean |realised - expected|
    over label sets drawn from the calibrated probabilities (CBPE), or E|N(0, standard error)|
    for DLE (its standard error is the realised loss's spread around the predicted one).
    """
    from loopml.features import prepare_features, prepare_target

    config = table.config
    metric = judged_metric(config)
    rng = np.random.default_rng(seed)
    key = pd.to_numeric(pool[table.key], errors="coerce").fillna(0.0)
    z = ((key - key.mean()) / (key.std() or 1.0)).to_numpy()
    rows = []
    for b in range(batches):
        strength = 1.5 * b / max(batches - 1, 1)
        weight = np.exp(strength * z) if not concept else np.ones(len(pool))
        picked = rng.choice(len(pool), BATCH_ROWS, replace=True, p=weight / weight.sum())
        batch = pool.iloc[picked].reset_index(drop=True)
        features = prepare_features(batch, config)
        truth = prepare_target(batch, config)
        if concept:  # a growing share of the relation reversed
            flip = rng.random(len(batch)) < 0.4 * b / max(batches - 1, 1)
            truth = truth.copy()
            if config.task == "regression":
                truth[flip] = truth.mean() * 2 - truth[flip]
            elif config.is_binary:
                values = truth.unique()
                swap = {values[0]: values[-1], values[-1]: values[0]}
                truth[flip] = truth[flip].map(swap)
            else:
                truth[flip] = rng.choice(config.classes, int(flip.sum()))
        outputs = model_outputs(model, features, config)
        estimate = estimator.estimate(outputs, features, metric=metric)[metric]
        realised = realised_metrics(config, truth, outputs).get(metric)
        if estimator.method == "cbpe":
            draws = estimator.realised_draws(outputs)[metric]
            noise = float(np.mean(np.abs(draws - draws.mean())))
        else:
            noise = float(estimate["standard_error"] or np.nan) * np.sqrt(2 / np.pi)
        rows.append((estimate["value"], estimate["lower"], estimate["upper"], realised, noise))
    return np.array(rows, dtype=float)


def detector_run(table, model, estimator, reference, pool, *, batches, drift_per_batch, seed):
    """Batches until the stream detector alarms (None: quiet over all ``batches``); alarms."""
    from loopml.features import prepare_features

    config = table.config
    reference_features = prepare_features(reference, config)
    profile = build_reference_profile(
        reference_features, config.columns.numeric, config.columns.categorical
    )
    sd = float(reference_features[table.key].std())
    metric = judged_metric(config)
    baseline = estimator.reference_estimated.get(metric)
    state = stream.StreamState()
    rng = np.random.default_rng(seed)
    alarms, first = 0, None
    for b in range(batches):
        picked = rng.choice(len(pool), BATCH_ROWS, replace=True)
        batch = prepare_features(pool.iloc[picked].reset_index(drop=True), config)
        batch[table.key] = batch[table.key] + drift_per_batch * sd * (b + 1)
        verdict = detect_drift(profile, batch, DriftPolicy()).to_dict()
        observations = stream.column_observations(
            verdict["columns"], batch_rows=len(batch), reference_rows=profile.n_rows
        )
        outputs = model_outputs(model, batch, config)
        entry = estimator.estimate(outputs, batch, metric=metric)[metric]
        from loopml.gate import improvement

        z = stream.performance_observation(
            -improvement(entry["value"], baseline, metric), entry["standard_error"]
        )
        if z is not None:
            observations[stream.PERFORMANCE_STREAM] = z
        state, result = stream.update_stream(
            state, observations, batch_id=f"b{b}", model_version="1", arl0=500
        )
        if result["alarm"]:
            alarms += 1
            first = b + 1 if first is None else first
    return first, alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--clean", type=int, default=100)
    parser.add_argument("--drift-batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--splits",
        type=int,
        default=1,
        help="random train/held-out/pool splits per table (the streams' MAE then averages over "
        "the pool's own luck, which every batch of one split shares)",
    )
    parser.add_argument(
        "--estimation-only", action="store_true", help="skip the stream detector's runs"
    )
    args = parser.parse_args()
    print(f"batch rows {BATCH_ROWS}; stream detector arl0 500 (expected clean batches per alarm)")
    for table in tables():
        started = time.perf_counter()
        fitted = [fit_split(table, seed) for seed in range(args.splits)]
        train, _, pool, model, estimator = fitted[0]  # the stream detector's runs use split 0
        metric = judged_metric(table.config)
        line = [f"{table.name:<22} {estimator.method} {metric}"]
        for concept in (False, True):
            rows = np.vstack(
                [
                    estimation_stream(
                        table,
                        split_model,
                        split_estimator,
                        split_pool,
                        batches=args.batches,
                        concept=concept,
                        seed=s,
                    )
                    for _, _, split_pool, split_model, split_estimator in fitted
                    for s in range(args.repeats)
                ]
            )
            label = "concept drift" if concept else "covariate shift"
            line.append(f"{label}: {stream_summary(rows)}")
        if args.estimation_only:
            print("\n  ".join(line), flush=True)
            continue
        false_alarms = [
            detector_run(
                table, model, estimator, train, pool, batches=args.clean, drift_per_batch=0, seed=s
            )[1]
            for s in range(args.repeats)
        ]
        delays = [
            detector_run(
                table,
                model,
                estimator,
                train,
                pool,
                batches=args.drift_batches,
                drift_per_batch=0.05,
                seed=100 + s,
            )[0]
            for s in range(args.repeats)
        ]
        line.append(f"false alarms in {args.clean} clean batches: {false_alarms}")
        line.append(f"slow drift ({table.key} +0.05 SD/batch) caught after batches: {delays}")
        line.append(f"[{time.perf_counter() - started:.0f} s]")
        print("\n  ".join(line), flush=True)


if __name__ == "__main__":
    main()
