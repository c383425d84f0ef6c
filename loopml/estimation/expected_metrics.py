"""CBPE's expected metrics on calibrated probabilities, and the realised metrics of label sets
drawn from them (the spread of a batch's realised metric around its expectation)."""

from __future__ import annotations

import numpy as np

DRAWS = 300
MAX_DRAW_ROWS = 5_000


def expected_binary_metrics(
    scores: np.ndarray, calibrated: np.ndarray, flagged: np.ndarray
) -> dict[str, float]:
    """CBPE's expected metrics of a binary classifier.

    Args:
        scores: the model's positive-class scores (they order the rows, as for a real ROC curve).
        calibrated: calibrated probabilities that each row is positive.
        flagged: whether each row is predicted positive.
    """
    p, flagged = np.asarray(calibrated, dtype=float), np.asarray(flagged, dtype=bool)
    tp, fp = float(p[flagged].sum()), float((1 - p[flagged]).sum())
    fn, tn = float(p[~flagged].sum()), float((1 - p[~flagged]).sum())
    result = {
        "accuracy": (tp + tn) / max(len(p), 1),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    auc = expected_roc_auc(scores, p)
    if auc is not None:
        result["roc_auc"] = auc
    return result


def expected_roc_auc(scores: np.ndarray, calibrated: np.ndarray) -> float | None:
    """Expected concordant (positive, negative) pairs over expected pairs, in score order.

    This is the area under the expected ROC curve (expected TPR and FPR at every score cut, as
    NannyML computes it) less one term: that area pairs each row with itself (p x (1 - p)),
    a pair no label set has — a row is positive or negative, never both. Left in, it pulls the
    estimate towards 0.5 by about (AUC - 0.5) x sum p(1 - p) / (sum p x sum (1 - p)), which
    grows as batches shrink. Tied scores form one step (half their pairs count, as in the
    realised AUC).
    """
    p = np.asarray(calibrated, dtype=float)
    # Rows grouped by score, highest first: each group's expected positives and negatives
    # (a row without a score is in no group, but its own pair still counts below).
    scores = np.asarray(scores, dtype=float)
    scored = ~np.isnan(scores)
    _, group, counts = np.unique(scores[scored], return_inverse=True, return_counts=True)
    positives = np.bincount(group.ravel(), weights=p[scored], minlength=counts.size)[::-1]
    negatives = counts[::-1] - positives
    self_pairs = float(np.sum(p * (1 - p)))
    pairs = positives.sum() * negatives.sum() - self_pairs
    if pairs <= 1e-12:
        return None
    positives_above = np.cumsum(positives) - positives
    concordant = np.sum(negatives * (positives_above + positives / 2)) - self_pairs / 2
    return float(concordant / pairs)


def expected_multiclass_metrics(calibrated: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """CBPE's expected macro metrics: one expected confusion matrix per class (one-vs-rest)."""
    rows, n_classes = calibrated.shape
    precision, recall, f1 = [], [], []
    for code in range(n_classes):
        picked = predicted == code
        tp = float(calibrated[picked, code].sum())
        fp = float(picked.sum()) - tp
        fn = float(calibrated[~picked, code].sum())
        if tp + fp + fn <= 1e-12:
            continue
        precision.append(_ratio(tp, tp + fp))
        recall.append(_ratio(tp, tp + fn))
        f1.append(_ratio(2 * tp, 2 * tp + fp + fn))
    return {
        "accuracy": float(calibrated[np.arange(rows), predicted].sum() / max(rows, 1)),
        "precision_macro": float(np.mean(precision)) if precision else 0.0,
        "recall_macro": float(np.mean(recall)) if recall else 0.0,
        "f1_macro": float(np.mean(f1)) if f1 else 0.0,
    }


def simulated_metric_draws(
    calibrated: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray | None,
    *,
    draws: int = DRAWS,
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Each metric on ``draws`` label sets drawn from the calibrated probabilities.

    Vectorised over the draws (a draws x rows matrix) with the definitions of
    :mod:`loopml.metrics`: positive-class precision/recall/F1 and the
    rank form of ROC-AUC for binary models; macro averages over the classes present for
    multiclass ones. Above ``MAX_DRAW_ROWS`` rows the draws use a row sample and their spread is
    shrunk by sqrt(sample / rows) around their mean (the 1/sqrt(n) law).
    """
    generator = np.random.default_rng(random_state)
    rows = len(predicted)
    picked = np.arange(rows)
    if rows > MAX_DRAW_ROWS:
        picked = np.sort(generator.choice(rows, MAX_DRAW_ROWS, replace=False))
    probabilities = calibrated[picked]
    guessed = np.asarray(predicted)[picked]
    uniform = generator.random((draws, len(picked)))
    if calibrated.ndim == 1:
        truth = uniform < probabilities[None, :]
        result = _binary_draws(truth, guessed.astype(bool), scores, picked)
    else:
        cumulative = np.cumsum(probabilities, axis=1)
        truth = (uniform[:, :, None] > cumulative[None, :, :]).sum(axis=2)
        truth = np.minimum(truth, probabilities.shape[1] - 1)
        result = _multiclass_draws(truth, guessed.astype(int), probabilities.shape[1])
    shrink = np.sqrt(len(picked) / rows)
    for name, values in result.items():
        values = values[np.isfinite(values)]
        if rows > len(picked) and values.size:
            values = values.mean() + (values - values.mean()) * shrink
        result[name] = values
    return result


def _binary_draws(
    truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None, picked: np.ndarray
) -> dict[str, np.ndarray]:
    tp = (truth & flagged).sum(axis=1).astype(float)
    fp = (~truth & flagged).sum(axis=1).astype(float)
    fn = (truth & ~flagged).sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = {
            "accuracy": (truth == flagged).mean(axis=1),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }
        if scores is not None:
            from scipy.stats import rankdata

            ranks = rankdata(np.asarray(scores, dtype=float)[picked])
            positives = truth.sum(axis=1).astype(float)
            negatives = truth.shape[1] - positives
            rank_sum = truth.astype(float) @ ranks
            result["roc_auc"] = np.where(
                (positives > 0) & (negatives > 0),
                (rank_sum - positives * (positives + 1) / 2) / (positives * negatives),
                np.nan,
            )
    return result


def _multiclass_draws(
    truth: np.ndarray, guessed: np.ndarray, classes: int
) -> dict[str, np.ndarray]:
    precision, recall, f1, present = [], [], [], []
    for code in range(classes):
        actual, chosen = truth == code, guessed[None, :] == code
        tp = (actual & chosen).sum(axis=1).astype(float)
        fp = (~actual & chosen).sum(axis=1).astype(float)
        fn = (actual & ~chosen).sum(axis=1).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision.append(np.where(tp + fp > 0, tp / (tp + fp), 0.0))
            recall.append(np.where(tp + fn > 0, tp / (tp + fn), 0.0))
            f1.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
        present.append(tp + fp + fn > 0)
    mask = np.array(present, dtype=float)
    count = np.maximum(mask.sum(axis=0), 1.0)

    def macro(values: list[np.ndarray]) -> np.ndarray:
        return (np.array(values) * mask).sum(axis=0) / count

    return {
        "accuracy": (truth == guessed[None, :]).mean(axis=1),
        "precision_macro": macro(precision),
        "recall_macro": macro(recall),
        "f1_macro": macro(f1),
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 1e-12 else 0.0
