"""What the registry holds for one model, read for ``loopml status`` without importing MLflow.

Why: importing MLflow and opening its SQLAlchemy store costs 2-3 s, and ``status`` is run dozens
of times a day to read three rows. On the embedded default (a SQLite registry) this module reads
those rows with the standard library's ``sqlite3``, read-only. It knows one schema: the one of
the pinned MLflow (its Alembic revision is checked first). Any other store, another revision, or
any error of the fast path goes through ``MlflowClient`` as before, so the answer never depends
on which path read it (``tests/unit/test_registry_view.py`` compares the two).

Reads only: nothing here decides a promotion. A registry that does not answer raises
:class:`~loopml.errors.RegistryError` on either path.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

# The Alembic revision of the MLflow pinned in constraints.txt whose tables the fast path reads.
KNOWN_SCHEMA_REVISIONS = frozenset({"dc11669786a5"})
DELETED_STAGE = "Deleted_Internal"  # how MLflow's SQL store marks a deleted version
WORKSPACE = "default"
TAG_PREFIX = "loopml."  # loopml's version tags (re-exported by loopml.registry)
CHAMPION = "champion"  # the aliases loopml moves (re-exported by loopml.registry)
CHALLENGER = "challenger"


@dataclass(frozen=True)
class VersionView:
    """One registered version: its number, the run that logged it and its tags."""

    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelView:
    """The versions of one registered model (oldest first) and the versions its aliases name."""

    versions: list[VersionView]
    aliases: dict[str, str]

    def by_alias(self, alias: str) -> VersionView | None:
        number = self.aliases.get(alias)
        return next((v for v in self.versions if v.version == number), None)


def tag_metrics(tags: dict[str, str], prefix: str = "test_") -> dict[str, float]:
    """Held-out metrics recorded as ``loopml.test_<metric>`` tags on a version."""
    start = f"{TAG_PREFIX}{prefix}"
    return {key[len(start) :]: float(value) for key, value in tags.items() if key.startswith(start)}


def read_model(tracking_uri: str, registry_uri: str | None, name: str) -> ModelView:
    """The registry's view of ``name`` (no versions when it is not registered).

    Raises:
        RegistryError: the registry did not answer.
    """
    path = sqlite_path(registry_uri or tracking_uri)
    if path is not None:
        if not path.is_file():
            return ModelView(versions=[], aliases={})
        try:
            return _read_sqlite(path, name)
        except (sqlite3.Error, UnknownSchema):
            pass  # a schema or state this reader does not know: MLflow's own client reads it
    return _read_with_client(tracking_uri, registry_uri, name)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for any other store), as SQLAlchemy
    reads it: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.netloc or len(parsed.path) < 2 or parsed.query:
        return None
    return Path(unquote(parsed.path[1:]))


class UnknownSchema(Exception):
    """The database was migrated by another MLflow than the one this reader knows."""


def _read_sqlite(path: Path, name: str) -> ModelView:
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        if revision not in KNOWN_SCHEMA_REVISIONS:
            raise UnknownSchema(revision)
        rows = connection.execute(
            "SELECT version, run_id FROM model_versions"
            " WHERE workspace = ? AND name = ? AND current_stage IS NOT ?"
            " ORDER BY version",
            (WORKSPACE, name, DELETED_STAGE),
        ).fetchall()
        tags: dict[str, dict[str, str]] = {}
        for version, key, value in connection.execute(
            "SELECT version, key, value FROM model_version_tags WHERE workspace = ? AND name = ?",
            (WORKSPACE, name),
        ):
            tags.setdefault(str(version), {})[key] = value
        aliases = dict(
            connection.execute(
                "SELECT alias, version FROM registered_model_aliases"
                " WHERE workspace = ? AND name = ?",
                (WORKSPACE, name),
            ).fetchall()
        )
    finally:
        connection.close()
    return ModelView(
        versions=[
            VersionView(str(version), run_id, tags.get(str(version), {}))
            for version, run_id in rows
        ],
        aliases={alias: str(version) for alias, version in aliases.items()},
    )


def _read_with_client(tracking_uri: str, registry_uri: str | None, name: str) -> ModelView:
    from loopml.registry import list_versions, mlflow_client, version_by_alias

    client = mlflow_client(tracking_uri, registry_uri)
    versions = [
        VersionView(str(v.version), v.run_id, dict(v.tags)) for v in list_versions(client, name)
    ]
    aliases = {}
    if versions:
        for alias in (CHAMPION, CHALLENGER):
            holder = version_by_alias(client, name, alias)
            if holder is not None:
                aliases[alias] = str(holder.version)
    return ModelView(versions=versions, aliases=aliases)
