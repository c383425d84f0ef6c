"""Performance without labels: CBPE for classification, DLE for regression.

Labels arrive late (days for churn, months for credit default); until then a batch's performance
can only be *estimated* from what the model outputs and what it learned about its own errors on
held-out rows. Two published methods (NannyML's definitions, written here from them):

- **CBPE** (confidence-based performance estimation, classification). A calibration map fitted on
  the held-out rows turns the model's probabilities into calibrated ones; on a calibrated model a
  row with probability p is positive with probability p, so the *expected* confusion matrix of a
  batch is a sum of probabilities (TP = sum of p over rows predicted positive, FP = sum of 1 - p,
  ...) and the expected ROC curve is the cumulative sums of p and 1 - p in score order.
  Multiclass: one-vs-rest calibration per class, rows renormalised.
- **DLE** (direct loss estimation, regression). A model fitted on the held-out rows' features and
  predictions predicts each row's absolute (and squared) error; their batch means estimate MAE
  (and MSE, so RMSE).

Both hold under covariate shift (the inputs move, P(target | inputs) does not) and cannot see
concept drift: when the relation itself changes, the model's own confidence is wrong and so is
the estimate. The estimator is fitted at registration time and stored with the model version as
JSON (the calibration map, the reference figures) plus skops files for DLE's loss models.

Intervals: the *realised* metric of a batch varies around the expected one because its labels
are random even when the probabilities are right. For CBPE the interval is the spread of the
metric over label sets drawn from the calibrated probabilities (a parametric bootstrap); for DLE
it is the normal interval from the loss model's out-of-fold residual spread over ``sqrt(rows)``.
Neither includes the calibration map's own error (small next to it from ~1,000 held-out rows).

One module a concern:

- :mod:`.outputs`: what a model says about a batch (labels, probabilities);
- :mod:`.calibration`: CBPE's calibration maps (identity, sigmoid, isotonic), chosen and applied;
- :mod:`.expected_metrics`: CBPE's expected metrics and the label sets drawn for its intervals;
- :mod:`.loss_models`: DLE's loss models and their input;
- :mod:`.estimator`: :class:`~loopml.estimation.estimator.PerformanceEstimator`, what is stored
  with a model version, applied to a batch (estimates and intervals), saved and loaded;
- :mod:`.fit`: fitting it on held-out rows at registration;
- :mod:`.verdict`: the estimated performance verdict;
- :mod:`.store`: estimates and realised values per batch (``estimates.jsonl``);
- :mod:`.versions`: storing it with, and loading it from, a registered model version.
"""
