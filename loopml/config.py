"""The typed project config, ``configs/NAME.yaml``: one per project, validated on load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopml.drift import DriftPolicy
from loopml.errors import ConfigError, ProjectNotFound

TaskKind = Literal["classification", "regression"]
Family = Literal[
    "logistic",
    "ridge",
    "hist_gradient_boosting",
    "random_forest",
]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    metric: str | None = None  # None: roc_auc (binary), f1_macro (multiclass), rmse (regression)
    max_training_rows: int | None = Field(200_000, ge=100)  # rows the CV search sees at most
    spaces: dict[str, dict[str, ParamRange]] = Field(default_factory=dict)
    # Blend the best trials of several families (greedy ensemble selection on out-of-fold
    # predictions) when the blend beats the best single pipeline out of fold.
    ensemble: bool = True


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


class PerformanceConfig(_Strict):
    """When labelled batches count as degraded against the champion's held-out metrics.

    ``max_drop`` is absolute for bounded scores and a fraction of the champion's value for error
    metrics (see :class:`GateConfig`); ``init`` writes 0.05 for classification, 0.15 for regression
    (an RMSE on a few hundred rows varies by several percent from sampling alone).
    """

    metric: str | None = None
    max_drop: float = Field(0.05, ge=0.0)  # drop of the metric that counts as degraded
    min_labelled_rows: int = Field(50, ge=1)
    # The drop must also exceed the batch metric's sampling noise at this one-sided level
    # (bootstrap standard error); null judges by max_drop alone.
    alpha: float | None = Field(0.05, gt=0.0, lt=0.5)


class MonitoringConfig(_Strict):
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)


class RetrainingConfig(_Strict):
    """What a retraining learns from."""

    window_rows: int = Field(5_000, ge=1)  # most recent labelled rows added to the reference
    max_age_days: float | None = Field(90, gt=0)  # labelled rows older than this age out
    cooldown_seconds: int = Field(300, ge=0)  # a burst of drift events within this gives one run


class ScheduleConfig(_Strict):
    """Cron schedules for the deployments ``loopml up`` serves (``None`` disables one)."""

    monitor: str | None = "0 * * * *"
    retrain: str | None = "0 3 * * 0"
    inbox_poll_seconds: int = Field(15, ge=1)


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
        return self

    @property
    def is_binary(self) -> bool:
        return self.task == "classification" and self.positive_label is not None

    @property
    def search_metric(self) -> str:
        if self.search.metric:
            return self.search.metric
        if self.task == "regression":
            return "rmse"
        return "roc_auc" if self.is_binary else "f1_macro"

    @property
    def gate_metric(self) -> str:
        return self.gate.metric or self.search_metric


def config_path(name: str, project_dir: Path) -> Path:
    return project_dir / "configs" / f"{name}.yaml"


def suite_path(name: str, project_dir: Path) -> Path:
    return project_dir / "expectations" / f"{name}.json"


def _format_validation_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{path}: field '{field}': {first['msg']}"


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
