"""The typed project config, ``configs/NAME.yaml``: one per project, validated on load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopml import metrics
from loopml.errors import ConfigError, ProjectNotFound

TaskKind = Literal["classification", "regression"]
ColumnKind = Literal["numeric", "categorical"]
Family = Literal[
    "logistic",
    "ridge",
    "hist_gradient_boosting",
    "random_forest",
    "logistic_spline",
    "ridge_spline",
]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    # Code that edits a config (the demo) gets the same checks as a file that is loaded.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DriftPolicy(_Strict):
    """How columns and batches are declared drifted (``monitoring.drift`` in the project config).

    A column drifts when its effect size reaches the method's threshold AND its test's p-value,
    corrected over the batch's columns, is below ``alpha``. A batch drifts when the share of
    drifted columns reaches ``drift_share`` or, with feature importances, the importance-weighted
    share reaches ``weighted_drift_share``.
    """

    min_rows: int = Field(
        100,
        ge=10,
        description="Batches (and columns) with fewer non-null rows get no verdict "
        "('insufficient_data'): tests on tiny samples are noise.",
    )
    alpha: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Significance level over all columns of one batch, after the correction "
        "chosen in 'multiple_testing'.",
    )
    multiple_testing: Literal["holm", "bh"] = Field(
        "holm",
        description="Correction for testing many columns at once. 'holm' bounds the chance that "
        "ANY drifted column is a false alarm by alpha, so each named column can be trusted; "
        "'bh' (Benjamini-Hochberg) only bounds the expected share of false alarms among the "
        "named columns: a little more sensitive, but it names extra columns more often.",
    )
    numeric_method: Literal["wasserstein", "psi"] = Field(
        "wasserstein",
        description="Effect size for numeric columns: Wasserstein distance divided by the "
        "reference standard deviation, or PSI on reference-quantile bins.",
    )
    categorical_method: Literal["jensenshannon", "psi"] = Field(
        "jensenshannon",
        description="Effect size for categorical columns: Jensen-Shannon distance (natural log, "
        "as in Evidently) or PSI on category shares; unseen categories count.",
    )
    wasserstein_threshold: float = Field(
        0.1,
        gt=0.0,
        description="Normalised Wasserstein distance from which a numeric column may drift "
        "(0.1 = the distributions moved by a tenth of a reference standard deviation).",
    )
    jensenshannon_threshold: float = Field(
        0.1,
        gt=0.0,
        description="Jensen-Shannon distance from which a categorical column may drift.",
    )
    psi_threshold: float = Field(
        0.2,
        gt=0.0,
        description="PSI from which a column may drift (industry rule of thumb: < 0.1 stable, "
        "0.1-0.25 moderate, > 0.25 major shift).",
    )
    psi_bins: int = Field(
        10, ge=2, le=100, description="Reference-quantile bins for PSI on numeric columns."
    )
    discrete_max_values: int = Field(
        20,
        ge=2,
        description="Numeric columns with at most this many distinct reference values are tested "
        "with chi-square on their values instead of Kolmogorov-Smirnov (which assumes no ties).",
    )
    column_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-column effect thresholds overriding the method's threshold.",
    )
    drift_share: float = Field(
        0.15,
        gt=0.0,
        le=1.0,
        description="The batch drifts when at least this share of checked columns drifts.",
    )
    weighted_drift_share: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="With feature importances: the batch drifts when the drifted columns carry at "
        "least this share of the total importance.",
    )
    null_rate_change: float = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="A column drifts when the share of its values that are missing moves by at "
        "least this much (0 % in the reference, 100 % in the batch: its source broke or its "
        "values no longer parse), whatever its remaining values look like.",
    )
    unseen_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="The batch drifts when, in one categorical column, at least this share of "
        "the rows hold categories the reference never had (the model knows none of them), "
        "whatever the share of drifted columns.",
    )

    @model_validator(mode="after")
    def _positive_overrides(self) -> DriftPolicy:
        bad = {column: value for column, value in self.column_thresholds.items() if value <= 0}
        if bad:
            raise ValueError(f"column_thresholds must be > 0: {bad}")
        return self

    def effect_threshold(self, column: str, kind: ColumnKind) -> float:
        """The effect-size threshold for ``column``: its override, else the method's threshold."""
        if column in self.column_thresholds:
            return self.column_thresholds[column]
        method = self.numeric_method if kind == "numeric" else self.categorical_method
        return {
            "wasserstein": self.wasserstein_threshold,
            "jensenshannon": self.jensenshannon_threshold,
            "psi": self.psi_threshold,
        }[method]


class ParamRange(_Strict):
    """A numeric hyperparameter range; ``log`` samples on a log scale."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class SplitConfig(_Strict):
    test_size: float = Field(0.2, gt=0.0, lt=0.9)
    cv_folds: int = Field(3, ge=2, le=20)
    random_state: int = 42


class SearchConfig(_Strict):
    """Hyperparameter search: which families, how many trials, how long."""

    families: list[Family] | None = None  # None: every family suited to the task
    trials: int = Field(24, ge=1)
    # Bounds the whole search, ensembling included (a slice is kept for it); None: no bound.
    timeout_seconds: float | None = Field(240, gt=0)
    metric: str | None = None  # None: loopml.metrics.DEFAULT_METRICS for the task
    max_training_rows: int | None = Field(200_000, ge=100)  # rows the CV search sees at most
    spaces: dict[str, dict[str, ParamRange]] = Field(default_factory=dict)
    # Blend the best trials of several families (greedy ensemble selection on out-of-fold
    # predictions) when the blend beats the best single pipeline out of fold.
    ensemble: bool = True
    # A blend is kept only when it beats the best single pipeline by this share of its CV
    # score: below that the gain is fold noise, and one pipeline is smaller, faster and exactly
    # explainable.
    ensemble_min_gain: float = Field(0.001, ge=0.0)


FairnessMetric = Literal[
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
    "mae_difference",
]
CLASSIFICATION_FAIRNESS_METRICS = (
    "demographic_parity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
)
REGRESSION_FAIRNESS_METRICS = ("mae_difference",)


class FairnessGateConfig(_Strict):
    """Refuse a challenger whose gap between groups of a sensitive column grows too much.

    The gap is ``metric`` (largest between-group difference, fairlearn's definition) on the
    held-out rows; the challenger's may exceed the champion's by at most ``max_increase``.
    """

    metric: FairnessMetric = "demographic_parity_difference"
    max_increase: float = Field(0.05, ge=0.0)


class GateConfig(_Strict):
    """When a new version may replace the champion.

    Margins are absolute for bounded scores (ROC-AUC, F1, accuracy, R²) and fractions of the
    champion's value for error metrics (RMSE, MAE, log-loss), which are in the target's units.
    """

    metric: str | None = None  # None: the search metric
    min_improvement: float = Field(0.0, ge=0.0)  # margin the challenger must beat the champion by
    old_data_tolerance: float = Field(
        0.02, ge=0.0
    )  # retraining: allowed loss on the frozen test set
    fairness: FairnessGateConfig | None = None  # None: no fairness gate (the audit still runs)
    # One-sided level: the challenger must be better with this confidence (paired bootstrap
    # on the same rows); a difference inside its own interval never promotes.
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    bootstrap_resamples: int = Field(1000, ge=100)
    # After a confirmed drift the frozen pre-drift set only blocks a loss beyond this.
    catastrophic_loss: float = Field(0.5, ge=0.0)
    # Drift is confirmed when drift or degradation was seen on drift_confirmations of the last
    # drift_batches monitored batches.
    drift_batches: int = Field(3, ge=1)
    drift_confirmations: int = Field(2, ge=1)


# Drop of the performance metric that counts as degraded, when the config names none. An RMSE
# measured on a few hundred rows varies by ~5% from sampling alone (1/sqrt(2n) for normal
# residuals at n=200): for regression a relative rise of 15% is a real degradation, not noise.
DEFAULT_MAX_DROP = {"classification": 0.05, "regression": 0.15}


class PerformanceConfig(_Strict):
    """When labelled batches count as degraded against the champion's held-out metrics.

    ``max_drop`` is absolute for bounded scores and a fraction of the champion's value for error
    metrics (see :class:`GateConfig`); left out, it is :data:`DEFAULT_MAX_DROP` for the task.
    """

    metric: str | None = None  # None: the search metric's default for the task
    max_drop: float | None = Field(None, ge=0.0)  # drop of the metric that counts as degraded
    min_labelled_rows: int = Field(50, ge=1)
    # The drop must also exceed the batch metric's sampling noise at this one-sided level
    # (bootstrap standard error); null judges by max_drop alone.
    alpha: float | None = Field(0.05, gt=0.0, lt=0.5)


class StreamConfig(_Strict):
    """The stream-level drift detector (CUSUM over batches; see docs/monitoring.md).

    ``arl0`` is the false-alarm budget: the expected number of clean batches between two false
    alarms of the whole detector (all columns and the estimated performance together).
    """

    enabled: bool = True
    arl0: float = Field(500, ge=10)
    reference_value: float = Field(0.5, gt=0.0)  # CUSUM's k, in standard deviations


class MonitoringConfig(_Strict):
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    # Rows of each side the Evidently report and prediction drift look at (a uniform sample), so
    # their cost does not grow with the batch; drift verdicts read the whole batch.
    sample_rows: int = Field(50_000, ge=100)
    # Rows of each side in the Evidently HTML report: Evidently costs ~0.5 s per 1,000 rows x 20
    # columns, and the report is built after the verdict is published (which does not wait).
    report_rows: int = Field(5_000, ge=100)
    stream: StreamConfig = Field(default_factory=StreamConfig)


DataPolicy = Literal["all_history", "recency_weighted", "recent_only"]


class RetrainingConfig(_Strict):
    """What a retraining learns from (see docs/retraining.md)."""

    window_rows: int = Field(5_000, ge=1)  # most recent labelled rows added to the reference
    max_age_days: float | None = Field(90, gt=0)  # labelled rows older than this age out
    cooldown_seconds: int = Field(300, ge=0)  # a burst of drift events within this gives one run
    # Training-data policies a retraining tries; a time-ordered backtest on the newest labelled
    # rows picks one. The first is the fallback when there are too few rows to backtest.
    policies: list[DataPolicy] = Field(
        default_factory=lambda: ["all_history", "recency_weighted", "recent_only"], min_length=1
    )
    min_recent_rows: int = Field(200, ge=1)  # recent_only needs at least this many rows
    recency_half_life_rows: int = Field(250, ge=1)  # weight halves every this many newer rows
    # The newest evaluation_share of the window is split, row by row alternately, between the
    # policy backtest (backtest_share of it) and the gate; neither ever trains what it judges.
    evaluation_share: float = Field(0.3, gt=0.0, lt=0.9)
    min_evaluation_rows: int = Field(30, ge=1)  # gate rows needed to judge on recent rows
    backtest_share: float = Field(0.5, gt=0.0, lt=1.0)
    min_backtest_rows: int = Field(30, ge=1)  # fewer: no backtest, the first policy is used


class ScheduleConfig(_Strict):
    """Cron schedules for the deployments ``loopml up`` serves (``None`` disables one), and how
    ``loopml up`` watches the inbox: it lists ``inbox/NAME/`` every ``inbox_poll_seconds`` (a
    local directory listing, no flow run) and starts an inbox run only when a file is ready;
    files left waiting (no champion yet, a failed attempt) get another run after
    ``inbox_sweep_seconds``."""

    monitor: str | None = "0 * * * *"
    retrain: str | None = "0 3 * * 0"
    inbox_poll_seconds: int = Field(15, ge=1)
    inbox_sweep_seconds: int = Field(600, ge=10)


class ColumnsConfig(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    # Dates and times: the pipeline turns them into parts (year, month, weekday, hour) and
    # elapsed days; drift monitoring skips them (time always moves on).
    datetime: list[str] = Field(default_factory=list)
    excluded: dict[str, str] = Field(default_factory=dict)  # column -> why

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.datetime]


class ProjectConfig(_Strict):
    """Everything loopml knows about one project."""

    name: str
    data: str  # the table ``init`` profiled: a path, or a SQL query when ``sql_url`` is set
    sql_url: str | None = None
    target: str
    task: TaskKind
    positive_label: str | int | float | bool | None = None
    classes: list[str | int | float | bool] | None = None
    id_column: str | None = None
    time_column: str | None = None
    columns: ColumnsConfig
    # Columns whose groups the fairness audit compares (features or excluded columns).
    sensitive_columns: list[str] = Field(default_factory=list)
    # What the model is for and what it must not be used for: the model card's first section.
    intended_use: str | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    retraining: RetrainingConfig = Field(default_factory=RetrainingConfig)
    schedules: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "use letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProjectConfig:
        if not self.columns.features:
            raise ValueError("columns: no feature columns (numeric or categorical) are listed")
        listed = [*self.columns.numeric, *self.columns.categorical, *self.columns.datetime]
        overlap = {column for column in listed if listed.count(column) > 1}
        if overlap:
            raise ValueError(f"columns: {sorted(overlap)} listed under more than one role")
        if self.target in self.columns.features:
            raise ValueError(f"columns: the target {self.target!r} is listed as a feature")
        if self.task == "classification" and self.positive_label is None and not self.classes:
            raise ValueError("classification needs positive_label (binary) or classes (multiclass)")
        known = {*self.columns.features, *self.columns.excluded}
        for column in self.sensitive_columns:
            if column == self.target:
                raise ValueError(f"sensitive_columns: {column!r} is the target, not a group")
            if column not in known:
                raise ValueError(
                    f"sensitive_columns: {column!r} is not a column of the table "
                    "(list a feature or an excluded column)"
                )
        fairness = self.gate.fairness
        if fairness is not None:
            allowed = (
                REGRESSION_FAIRNESS_METRICS
                if self.task == "regression"
                else CLASSIFICATION_FAIRNESS_METRICS
            )
            if fairness.metric not in allowed:
                raise ValueError(
                    f"gate.fairness.metric {fairness.metric!r} does not fit {self.task}; "
                    f"use one of {list(allowed)}"
                )
            if not self.sensitive_columns:
                raise ValueError("gate.fairness needs sensitive_columns to compare groups of")
        for field, metric, monitored in (
            ("search.metric", self.search.metric, False),
            ("gate.metric", self.gate.metric, False),
            ("monitoring.performance.metric", self.monitoring.performance.metric, True),
        ):
            problem = metric and metrics.unknown_metric_message(
                metric, self.task_kind, monitoring=monitored
            )
            if problem:
                raise ValueError(f"{field}: {problem}")
        if self.monitoring.performance.max_drop is None:
            self.monitoring.performance.max_drop = DEFAULT_MAX_DROP[self.task]
        return self

    @property
    def is_binary(self) -> bool:
        return self.task == "classification" and self.positive_label is not None

    @property
    def task_kind(self) -> metrics.TaskKind:
        """``"binary"``, ``"multiclass"`` or ``"regression"``."""
        if self.task == "regression":
            return "regression"
        return "binary" if self.is_binary else "multiclass"

    @property
    def search_metric(self) -> str:
        return self.search.metric or metrics.default_metric(self.task_kind)

    @property
    def gate_metric(self) -> str:
        return self.gate.metric or self.search_metric

    @property
    def performance_metric(self) -> str:
        """The metric monitoring judges degradation on; computable from the prediction log."""
        return self.monitoring.performance.metric or metrics.default_metric(self.task_kind)


def config_path(name: str, project_dir: Path) -> Path:
    return project_dir / "configs" / f"{name}.yaml"


def suite_path(name: str, project_dir: Path) -> Path:
    return project_dir / "expectations" / f"{name}.json"


def _format_validation_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{path}: field '{field}': {message}" if field else f"{path}: {message}"


def load_config(name: str, project_dir: Path) -> ProjectConfig:
    """Load and validate ``configs/NAME.yaml``.

    Raises:
        ProjectNotFound: no config file for ``name``.
        ConfigError: the file is not YAML or a field is invalid (the message names it).
    """
    path = config_path(name, project_dir)
    if not path.is_file():
        raise ProjectNotFound(
            f"unknown project {name!r}: {path} does not exist (create it with 'loopml init')"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    try:
        config = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from exc
    if config.name != name:
        raise ConfigError(f"{path}: field 'name' is {config.name!r}, expected {name!r}")
    return config


def dump_config(config: ProjectConfig) -> str:
    """YAML text for a config, in field order, without defaults hidden."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(config: ProjectConfig, project_dir: Path) -> Path:
    path = config_path(config.name, project_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_config(config))
    return path
