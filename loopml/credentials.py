"""The local stack's credentials: generated once per LOOPML_HOME, kept in a 0600 file.

Why: the servers loopml starts on 127.0.0.1 (Prefect, MLflow's UI, Evidently's UI, the
notification sink) are reachable by any web page the user opens and any local process. Each
one asks for a secret, and every loopml process reads the secrets from here, so nothing a user
types changes. Pure: the standard library only, nothing done at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from loopml.registry_view import sqlite_path

CREDENTIALS_FILE = "credentials.json"
PREFECT_USER = "loopml"
MLFLOW_ADMIN = "loopml"


@dataclass(frozen=True)
class Credentials:
    """The secrets of one installation's local stack.

    Attributes:
        prefect_auth_string: ``user:password`` for Prefect's API (the server's
            ``PREFECT_SERVER_API_AUTH_STRING``, clients' ``PREFECT_API_AUTH_STRING``); the
            Prefect UI asks for it as its password.
        mlflow_username: the MLflow UI's admin user (basic auth).
        mlflow_password: its password.
        evidently_secret: the Evidently UI's write secret (``evidently-secret`` header).
        sink_token: the notification sink's bearer token.
    """

    prefect_auth_string: str
    mlflow_username: str
    mlflow_password: str
    evidently_secret: str
    sink_token: str


def generate_credentials() -> Credentials:
    """Fresh random secrets (URL-safe, so they fit headers and ini files as they are)."""
    return Credentials(
        prefect_auth_string=f"{PREFECT_USER}:{secrets.token_urlsafe(24)}",
        mlflow_username=MLFLOW_ADMIN,
        mlflow_password=secrets.token_urlsafe(24),
        evidently_secret=secrets.token_urlsafe(24),
        sink_token=secrets.token_urlsafe(24),
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(scratch, 0o600)  # the umask cannot widen it, but an older file could be 0644
    scratch.replace(path)


@contextlib.contextmanager
def sqlite_creation_lock(uri: str) -> Iterator[None]:
    """Held while a process first opens the database of a ``sqlite:///`` URI (any other store:
    no lock). Why: MLflow and Optuna create a new file's tables as they open it, and two first
    commands doing that at once collided ("table ... already exists", "No such index")."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".lock")):
        yield


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held across processes (released when the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_credentials(home: Path) -> Credentials | None:
    """The installation's credentials, or ``None`` before the first use."""
    try:
        data = json.loads((home / CREDENTIALS_FILE).read_text())
        return Credentials(**data)
    except (OSError, ValueError, TypeError):
        return None


def load_or_create_credentials(home: Path) -> Credentials:
    """The installation's credentials, generated on first use (under a lock: one set only)."""
    existing = read_credentials(home)
    if existing is not None:
        return existing
    with file_lock(home / ".credentials.lock"):
        existing = read_credentials(home)
        if existing is not None:
            return existing
        created = generate_credentials()
        write_private(home / CREDENTIALS_FILE, json.dumps(asdict(created), indent=2))
        return created
