"""Data drift against a stored reference profile: trustworthy on small batches, flat on big ones.

The reference (training) data is summarised once, when a model version is registered, into a
reference profile (:class:`~loopml.drift.profile.ReferenceProfile`: quantile bin edges with counts
for numeric columns, category counts for categorical ones). A batch is then compared with the
profile by :func:`~loopml.drift.verdict.detect_drift`, reading the batch whole or chunk by chunk:
each chunk only adds to per-column histograms on the reference's bin edges, so a 10M-row batch
costs what its histograms cost.

A column drifts under the policy (:class:`~loopml.config.DriftPolicy`) only when BOTH its effect
size (normalised Wasserstein distance or PSI for numeric columns, Jensen-Shannon distance or PSI
for categorical ones) reaches its threshold AND its significance test (Kolmogorov-Smirnov, or
chi-square for categorical and low-cardinality numeric columns), corrected for testing many
columns at once (Benjamini-Hochberg or Holm), is below ``alpha``. The effect threshold keeps huge
batches from flagging negligible differences; the test keeps small batches from flagging sampling
noise. See docs/monitoring.md.

benchmarks/evidently_defaults.py re-implements Evidently 0.7.23's default per-column tests on the
same histograms (a fast, memory-flat equivalent of ``DataDriftPreset()`` that the tests and the
drift benchmark compare with Evidently).

One module a concern:

- :mod:`.profile`: the reference profile, built once from the reference data;
- :mod:`.batch`: a batch accumulated on the profile's bins, whole or chunk by chunk;
- :mod:`.statistics`: the effect sizes and tests on those histograms;
- :mod:`.verdict`: per-column drift and the batch's verdict under the policy.
"""
