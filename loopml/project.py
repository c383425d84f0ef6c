"""Project-level operations that are not flows: ``init`` and ``status``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loopml.config import (
    NAME_PATTERN,
    ColumnsConfig,
    ProjectConfig,
    config_path,
    save_config,
    suite_path,
)
from loopml.data import read_table
from loopml.errors import ConfigError
from loopml.fairness import propose_sensitive_columns
from loopml.profiling import infer_profile, suggest_suite


def default_project_name(data: str) -> str:
    stem = Path(data).name.split(".")[0] if data else "project"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_.-") or "project"
    return name[:64]


def _stored_data_location(data: str, project_dir: Path, is_sql: bool) -> str:
    if is_sql:
        return data
    path = Path(data).expanduser().resolve()
    try:
        return str(path.relative_to(project_dir))
    except ValueError:
        return str(path)


def initialise_project(
    data: str,
    *,
    target: str,
    name: str | None,
    task: str | None,
    positive_label: str | None,
    id_column: str | None,
    time_column: str | None,
    sql_url: str | None,
    project_dir: Path,
    force: bool = False,
) -> dict[str, Any]:
    """Profile ``data`` and write the project's config and suggested suite.

    Raises:
        DataError: the table cannot be used (missing target, one class, ...).
        ConfigError: the project exists already and ``force`` is off.
    """
    name = name or default_project_name(data)
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"invalid project name {name!r}: use up to 64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    if task not in (None, "classification", "regression"):
        raise ConfigError(f"--task must be classification or regression, not {task!r}")
    config_file = config_path(name, project_dir)
    suite_file = suite_path(name, project_dir)
    if not force and (config_file.exists() or suite_file.exists()):
        raise ConfigError(
            f"project {name!r} exists already ({config_file}); pass --force to overwrite it"
        )
    frame = read_table(data, sql_url=sql_url)
    for column, flag in ((id_column, "--id-column"), (time_column, "--time-column")):
        if column is not None and column not in frame.columns:
            raise ConfigError(f"{flag} {column!r} is not a column of the table")
    profile = infer_profile(
        frame,
        target,
        task=task,
        positive_label=positive_label,
        id_column=id_column,
        time_column=time_column,
    )
    config = ProjectConfig(
        name=name,
        data=_stored_data_location(data, project_dir, sql_url is not None),
        sql_url=sql_url,
        target=target,
        task=profile.task,
        positive_label=profile.positive_label,
        classes=profile.classes,
        id_column=id_column,
        time_column=time_column,
        columns=ColumnsConfig(
            numeric=profile.numeric,
            categorical=profile.categorical,
            datetime=profile.datetime,
            excluded=profile.excluded,
        ),
        sensitive_columns=propose_sensitive_columns(
            [*profile.numeric, *profile.categorical, *profile.excluded], target
        ),
    )
    notes = list(profile.notes)
    if sql_url and _has_literal_password(sql_url):
        notes.append(
            f"{config_file.name} keeps the --db URL with its password: write it as "
            "${VARIABLE} in the URL to read it from the environment instead"
        )
    if config.sensitive_columns:
        notes.append(
            f"sensitive_columns (fairness audit) proposed from their names: "
            f"{', '.join(config.sensitive_columns)}; edit the list in {config_file.name}"
        )
    suite = suggest_suite(frame, config)
    save_config(config, project_dir)
    suite_file.parent.mkdir(parents=True, exist_ok=True)
    suite_file.write_text(json.dumps(suite, indent=2, default=str) + "\n")
    return {
        "name": name,
        "task": config.task,
        "target": target,
        "positive_label": config.positive_label,
        "classes": config.classes,
        "rows": len(frame),
        "numeric": profile.numeric,
        "categorical": profile.categorical,
        "datetime": profile.datetime,
        "excluded": profile.excluded,
        "sensitive_columns": config.sensitive_columns,
        "notes": notes,
        "config": str(config_file),
        "suite": str(suite_file),
        "expectations": len(suite.get("expectations", [])),
    }


def _has_literal_password(url: str) -> bool:
    """Whether an SQLAlchemy URL spells out a password (not a ``$VARIABLE``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return False
    return bool(password) and not str(password).startswith("$")
