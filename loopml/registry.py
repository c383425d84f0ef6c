"""MLflow: experiments, runs, the model registry and its ``champion``/``challenger`` aliases.

The client is built once by the entry point (``mlflow_client``) and handed down.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, Schema
from sklearn.model_selection import FixedThresholdClassifier

from loopml.credentials import sqlite_creation_lock
from loopml.errors import ModelRefused, RegistryError
from loopml.registry_view import CHALLENGER as CHALLENGER  # re-exported: callers import it here
from loopml.registry_view import CHAMPION, TAG_PREFIX, sqlite_path, tag_metrics

MODEL_ARTIFACT = "model"
REFERENCE_DIR = "reference"
# The search's trials, one table artifact on the training run (``search_trials.json``).
SEARCH_TRIALS_TABLE = "search_trials"
SERVING_PACKAGES = ("scikit-learn", "skops", "pandas", "numpy", "scipy", "pyarrow")
SAFE_FORMAT = "skops"
TAG_MODEL_SHA256 = f"{TAG_PREFIX}model_sha256"
TAG_MODEL_FORMAT = f"{TAG_PREFIX}serialization_format"
TAG_GATE = f"{TAG_PREFIX}gate"
TAG_OWNER = f"{TAG_PREFIX}owner"
GATE_PENDING = "pending"
GATE_FAILED = "failed"
# A version or run owned by another machine is only presumed dead after this long.
FOREIGN_OWNER_GRACE_SECONDS = 6 * 3600


@dataclass(frozen=True)
class LoggedDataset:
    """A table the run used, shown in the MLflow UI's Datasets column of the run.

    Attributes:
        frame: the rows, as the run saw them.
        context: MLflow's dataset context: ``"training"`` or ``"evaluation"``.
        name: the dataset's name in the UI.
        target: its target column, when it has one.
    """

    frame: pd.DataFrame
    context: str
    name: str
    target: str | None = None


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


_OPENED_SQLITE_STORES: set[str] = set()  # MLflow keeps each URI's store open for the process


def mlflow_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """A client of the tracking store and registry; a SQLite store is created once, whole.

    Why: MLflow creates a SQLite store's tables (its schema migrations) when a process first
    opens it. Two first commands of a fresh home at once both migrated the same file and one
    failed ("No such index: 'index_jobs_function_status_creation_time'", seen under load).
    Each process now opens a SQLite store the first time under a lock beside its file.

    Raises:
        RegistryError: a SQLite registry store could not be opened.
    """
    registry_uri = registry_uri or tracking_uri
    new_stores = sorted(
        uri
        for uri in {tracking_uri, registry_uri} - _OPENED_SQLITE_STORES
        if sqlite_path(uri) is not None
    )
    with ExitStack() as locks:
        for uri in new_stores:  # in a fixed order: two processes cannot wait for each other
            locks.enter_context(sqlite_creation_lock(uri))
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
        if new_stores:
            try:  # the tracking store opened with the client; the registry's opens lazily
                client.search_registered_models(max_results=1)
            except MlflowException as exc:
                raise registry_unavailable(client, exc) from exc
            _OPENED_SQLITE_STORES.update(new_stores)
    return client


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment id for ``name``, created (with its artifact location) when missing.

    The experiment is typed for model training (``mlflow.experimentKind``): untyped, MLflow 3's
    UI opens it in its GenAI view (traces, latency, tokens).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
        except MlflowException as exc:  # a command started beside this one created it first
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def serving_requirements() -> list[str]:
    """Explicit pins for the logged model (inferring them costs ~7 s per ``log_model``)."""
    return [f"{package}=={package_version(package)}" for package in SERVING_PACKAGES]


def log_and_register(
    *,
    client: MlflowClient,
    experiment_id: str,
    name: str,
    model: Any,
    input_example: pd.DataFrame,
    trusted_types: list[str],
    params: dict[str, Any],
    metrics: dict[str, float],
    run_tags: dict[str, str],
    version_tags: dict[str, str],
    figures: dict[str, Any],
    reference_files: dict[str, Path],
    run_name: str,
    datasets: Sequence[LoggedDataset] = (),
    tables: dict[str, pd.DataFrame] | None = None,
    training_features: pd.DataFrame | None = None,
) -> RegisteredVersion:
    """Log one training run (params, metrics, figures, reference data, model) and register
    the model as a new version of ``name`` carrying ``version_tags``.

    ``datasets`` go on the run as MLflow dataset inputs (``mlflow.log_input``, with their
    context); each of ``tables`` becomes a table artifact ``NAME.json`` (``mlflow.log_table``),
    which the run's Artifacts tab shows as a table. ``training_features`` (default: the input
    example) are the rows the model learned from, as users send them; the signature is
    :func:`serving_signature`'s.
    """
    signature = serving_signature(
        model, input_example, input_example if training_features is None else training_features
    )
    owner = {TAG_OWNER: process_owner()}
    with (
        _fluent_api_on(client),
        mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags={**run_tags, **owner}
        ) as run,
    ):
        mlflow.log_params({key: _param_text(value) for key, value in params.items()})
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        for path in reference_files.values():
            mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)
        for dataset in datasets:
            mlflow.log_input(
                mlflow.data.from_pandas(dataset.frame, targets=dataset.target, name=dataset.name),
                context=dataset.context,
            )
        for table_name, table in (tables or {}).items():
            mlflow.log_table(table, artifact_file=f"{table_name}.json")
        logged = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=input_example.head(5),
            serialization_format="skops",
            skops_trusted_types=trusted_types,
            pip_requirements=serving_requirements(),
        )
        _log_figures(figures)  # last: the figure worker (loopml.figures) drew them meanwhile
        run_id = run.info.run_id
        fingerprint = model_fingerprint(logged.model_uri)
        # The version is born "pending" with its owner, so an interrupted registration is
        # found (and decided) by the next run instead of lingering without a gate decision.
        registered = mlflow.register_model(
            logged.model_uri,
            name,
            tags={**version_tags, **fingerprint, TAG_GATE: GATE_PENDING, **owner},
        )
    return RegisteredVersion(
        name=name,
        version=str(registered.version),
        run_id=run_id,
        model_uri=f"models:/{name}/{registered.version}",
    )


def serving_signature(
    model: Any, input_example: pd.DataFrame, training_features: pd.DataFrame
) -> ModelSignature:
    """The signature ``mlflow.pyfunc`` enforces: MLflow's, inferred from ``input_example``,
    except that an integer column holding nulls in ``training_features`` is declared ``Any``.

    Why: users send such a column as pandas' nullable Int64 (Parquet) or as float64 (CSV), and
    MLflow's schema enforcement takes no scalar type from both: ``long`` refuses NA and float64,
    ``double`` refuses Int64. ``Any`` passes either as it is to the pipeline, whose numeric step
    reads both as floats, as ``loopml score`` does. Other columns keep their inferred types.
    """
    signature = infer_signature(input_example, model.predict(input_example))
    nullable = set(nullable_integer_columns(training_features))
    inputs = [
        ColSpec(AnyType(), spec.name, required=spec.required) if spec.name in nullable else spec
        for spec in signature.inputs.inputs
    ]
    return ModelSignature(Schema(inputs), signature.outputs, signature.params)


def nullable_integer_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of whole numbers with nulls among them: pandas' nullable integers (as Parquet
    reads them) or floats whose values are all whole (as CSV reads an integer column with gaps).
    """
    columns = []
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            continue
        if not values.hasnans:
            continue
        if pd.api.types.is_integer_dtype(values) or bool((values.dropna() % 1 == 0).all()):
            columns.append(column)
    return columns


@contextmanager
def _fluent_api_on(client: MlflowClient) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model`` has no client form) at ``client``'s stores for
    the block, so the run lands where the caller's client reads, whatever the process
    environment says; the previous URIs are put back after."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking, registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    # The setters also write (or drop) these variables: they are put back as they were.
    variables = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking)
        registry_utils._registry_uri = registry
        for key, value in variables.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _log_figures(figures: dict[str, Any]) -> None:
    """Each figure as ``plots/NAME.png`` of the active run, from its one PNG rendering."""
    if not figures:
        return
    from loopml.figures import png_bytes

    with tempfile.TemporaryDirectory() as scratch:
        for figure_name, figure in figures.items():
            (Path(scratch) / f"{figure_name}.png").write_bytes(png_bytes(figure))
        mlflow.log_artifacts(scratch, artifact_path="plots")


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if is_not_found(exc):
            raise RegistryError(f"model {name!r} has no version {version}") from exc
        raise registry_unavailable(client, exc) from exc


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or ``None`` when the alias (or the model) does not exist.

    Fails closed: any other error (server down, database locked, permission) raises
    :class:`RegistryError`, because "no champion" would let a candidate skip the gate.
    """
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise registry_unavailable(client, exc) from exc
    except Exception as exc:  # noqa: BLE001 - a transport error is an outage, never "none"
        raise registry_unavailable(client, exc) from exc


def is_not_found(exc: MlflowException) -> bool:
    """Whether MLflow answered "no such model/alias" (the only error that means "none")."""
    code = exc.error_code
    if code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
        return True
    # Stores answer a missing alias with INVALID_PARAMETER_VALUE "... alias X not found."
    return code == ErrorCode.Name(INVALID_PARAMETER_VALUE) and "not found" in exc.message


def registry_unavailable(client: MlflowClient, exc: BaseException) -> RegistryError:
    """One line for an MLflow error that is not a plain "not found"."""
    detail = " ".join(str(getattr(exc, "message", exc)).split())[:200]
    return RegistryError(
        f"MLflow at {client.tracking_uri} failed ({detail}); nothing was promoted or changed"
    )


def require_champion(client: MlflowClient, name: str) -> ModelVersion:
    champion = version_by_alias(client, name, CHAMPION)
    if champion is None:
        raise RegistryError(
            f"project {name!r} has no champion model yet: run 'loopml train {name}' first"
        )
    return champion


def set_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise registry_unavailable(client, exc) from exc


def clear_alias(client: MlflowClient, name: str, alias: str) -> None:
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if not is_not_found(exc):
            raise registry_unavailable(client, exc) from exc


def set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, str(value))
    except MlflowException as exc:
        raise registry_unavailable(client, exc) from exc


def process_owner() -> str:
    """``host:pid`` of this process, recorded on runs and versions it creates."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str | None, created_ms: int | None, now: float | None = None) -> bool:
    """Whether the process that created a run or version is no longer running.

    On this host the pid is checked; another host's owner (or none recorded) is presumed gone
    only after :data:`FOREIGN_OWNER_GRACE_SECONDS`.
    """
    host, _, pid = (owner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    age = (now or time.time()) - (created_ms or 0) / 1000
    return age > FOREIGN_OWNER_GRACE_SECONDS


def undecided_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Versions whose registration was interrupted before the gate decided (owner gone)."""
    return [
        model_version
        for model_version in list_versions(client, name)
        if model_version.tags.get(TAG_GATE) in (None, GATE_PENDING)
        and owner_is_gone(model_version.tags.get(TAG_OWNER), model_version.creation_timestamp)
    ]


def dangling_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    """Runs still RUNNING in MLflow whose process died (SIGKILL, power loss)."""
    try:
        runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    except MlflowException as exc:
        raise registry_unavailable(client, exc) from exc
    return [run for run in runs if owner_is_gone(run.data.tags.get(TAG_OWNER), run.info.start_time)]


def end_run_failed(client: MlflowClient, run_id: str) -> None:
    try:
        client.set_terminated(run_id, status="FAILED")
    except MlflowException as exc:
        raise registry_unavailable(client, exc) from exc


def version_metrics(model_version: ModelVersion, prefix: str = "test_") -> dict[str, float]:
    """Held-out metrics recorded as ``loopml.test_<metric>`` tags on a version."""
    return tag_metrics(model_version.tags, prefix)


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of ``name``, oldest first (empty when the model is not registered)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if is_not_found(exc):
            return []
        raise registry_unavailable(client, exc) from exc
    return sorted(versions, key=lambda v: int(v.version))


def model_fingerprint(model_uri: str) -> dict[str, str]:
    """The serialization format and sha256 of the model file behind ``model_uri`` (as tags).

    Read back from the artifact store, so the hash is of what later loads will download.
    """
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        serialization_format, model_file = _sklearn_model_file(local)
        return {TAG_MODEL_FORMAT: serialization_format, TAG_MODEL_SHA256: file_sha256(model_file)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sklearn_model_file(local: Path) -> tuple[str, Path]:
    flavor = Model.load(str(local / "MLmodel")).flavors.get("sklearn") or {}
    return str(flavor.get("serialization_format", "")), local / str(flavor.get("pickled_model"))


def load_version(client: MlflowClient, model_version: ModelVersion) -> Any:
    """The scikit-learn model of a registered version, after checking it is the file registered.

    The artifact is downloaded once, its format must be skops (pickle formats can run code on
    load) and its model file must hash to the ``loopml.model_sha256`` tag recorded at
    registration; only then is that same local copy loaded.

    Raises:
        ModelRefused: the artifact is not the one registered, or is in a pickle format.
        RegistryError: the artifact cannot be downloaded.
    """
    name, version = model_version.name, str(model_version.version)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            # The client resolves the version's files: a ``models:/`` URI would be resolved
            # against the process's registry URI, which need not be the client's.
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=client.get_model_version_download_uri(name, version),
                    dst_path=scratch,
                    tracking_uri=client.tracking_uri,
                )
            )
            serialization_format, model_file = _sklearn_model_file(local)
        except MlflowException as exc:
            raise registry_unavailable(client, exc) from exc
        except OSError as exc:
            raise ModelRefused(
                f"model version {version} of {name} cannot be read ({exc}); it was not loaded",
                name=name,
                version=version,
                reason="unreadable",
            ) from exc
        expected = model_version.tags.get(TAG_MODEL_SHA256)
        if serialization_format != SAFE_FORMAT:
            raise ModelRefused(
                f"model version {version} of {name} is stored as {serialization_format!r}, not "
                f"{SAFE_FORMAT}: a pickle format can run code when loaded, so it was refused",
                name=name,
                version=version,
                reason="unsafe_format",
            )
        actual = file_sha256(model_file) if model_file.is_file() else "missing"
        if expected is not None and actual != expected:
            raise ModelRefused(
                f"model version {version} of {name} does not match the file registered "
                f"(sha256 {actual[:12]} instead of {expected[:12]}); it was not loaded",
                name=name,
                version=version,
                reason="hash_mismatch",
            )
        if expected is None:
            return _load_skops(model_file, name=name, version=version, verified=False)
        # The bytes were just checked against the registered hash: a model loaded from the same
        # bytes before is the same model (the check itself runs at every load).
        loaded = _verified_models.get(actual)
        if loaded is None:
            loaded = _load_skops(model_file, name=name, version=version, verified=True)
            _verified_models[actual] = loaded
            while len(_verified_models) > VERIFIED_MODELS_KEPT:
                _verified_models.pop(next(iter(_verified_models)))
        return loaded


# Loaded models by the sha256 of their verified file, oldest first: a long-lived process (the
# warm process, a runner) deserialises the champion once, not at every command. Callers share
# the object and only predict with it (a refit works on a clone).
VERIFIED_MODELS_KEPT = 4
_verified_models: dict[str, Any] = {}


# Types a loopml pipeline may hold; anything else in a skops file is refused before loading.
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "loopml.")


def _load_skops(model_file: Path, *, name: str, version: str, verified: bool) -> Any:
    """Load a skops file with skops itself (MLflow's sklearn loader does the same underneath).

    MLflow's loader is switched off by ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, and it
    would trust the type list written in the artifact's ``MLmodel`` file, which whoever can edit
    the artifact can edit. A ``verified`` file (its sha256 matches the one recorded at
    registration) holds the types loopml itself logged; an unverified one (a version registered
    before hashes were recorded) may hold only scikit-learn, numpy, scipy and loopml types.
    """
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=model_file)
    unknown = [
        kind for kind in untrusted if not verified and not kind.startswith(TRUSTED_TYPE_PREFIXES)
    ]
    if unknown:
        raise ModelRefused(
            f"model version {version} of {name} holds types loopml does not trust "
            f"({', '.join(unknown[:3])}); it was not loaded",
            name=name,
            version=version,
            reason="untrusted_types",
        )
    return skops.io.load(model_file, trusted=untrusted)


def load_version_model(
    model_version: ModelVersion, positive_label: Any = None, client: MlflowClient | None = None
) -> Any:
    """The model of a registered version, ready to predict with its own ``predict``.

    Loaded through :func:`load_version` (format and hash checked first; ``client`` defaults to
    the tracking URI of the environment). Versions registered before the decision threshold
    moved into the artifact hold a bare pipeline and the threshold as the ``loopml.threshold``
    tag: they are wrapped here, once, so no caller reads the tag. Pass the project's
    ``positive_label`` (binary projects).
    """
    model = load_version(client or MlflowClient(), model_version)
    threshold = model_version.tags.get(f"{TAG_PREFIX}threshold")
    if threshold and positive_label is not None and not isinstance(model, FixedThresholdClassifier):
        from loopml.modeling import with_threshold

        model = with_threshold(model, float(threshold), positive_label)
    return model


def download_reference(client: MlflowClient, run_id: str, file_name: str, cache_dir: Path) -> Path:
    """A reference artifact of a training run (training data, profile), cached locally."""
    target = cache_dir / run_id / file_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        local = client.download_artifacts(run_id, f"{REFERENCE_DIR}/{file_name}", scratch)
        Path(local).replace(target)
    return target
