"""The hyperparameter search: search spaces, a portfolio of proven starts, the Optuna study
across families, greedy ensemble selection, and fitting the chosen pipeline.

Scores keep their natural sign: the study maximises scores (roc_auc, f1_macro, ...) and
minimises errors (rmse, mae, log_loss); ``SearchResult.direction`` says which.

The search goes beyond the best single family: every family's study starts from a small
portfolio of configurations known to do well on tabular data (:mod:`.portfolio`), boosting
stops early on a validation slice instead of running a fixed number of rounds (see
:mod:`loopml.modeling`), and the champion may be a weighted soft-voting blend of the best trials
of several families, chosen by greedy ensemble selection on out-of-fold predictions (Caruana et
al., "Ensemble Selection from Libraries of Models", ICML 2004) when it beats the best single
pipeline out of fold by more than ``search.ensemble_min_gain`` of the config (:mod:`.ensemble`).

One module a concern:

- :mod:`.spaces`: each family's parameter ranges and how a trial samples them;
- :mod:`.portfolio`: the proven first trials of each family;
- :mod:`.cross_validation`: the training rows checked, the folds, scoring predictions on them;
- :mod:`.study`: :func:`~loopml.search.study.run_search`, the Optuna study across families;
- :mod:`.ensemble`: greedy ensemble selection over the best trials;
- :mod:`.result`: :class:`~loopml.search.result.SearchResult` and the trials table;
- :mod:`.fit`: the champion as an estimator, fitted on every row, and its out-of-fold scores.

The pipelines themselves (families, preprocessing, the threshold wrapper) are in
:mod:`loopml.modeling`.
"""
