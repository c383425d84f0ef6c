"""MLflow: experiments, runs, the model registry and its ``champion``/``challenger`` aliases.

The client is built once by the entry point (``mlflow_client``) and handed down.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from sklearn.model_selection import FixedThresholdClassifier

from loopml.errors import RegistryError

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "loopml."
MODEL_ARTIFACT = "model"
REFERENCE_DIR = "reference"
SERVING_PACKAGES = ("scikit-learn", "skops", "pandas", "numpy", "scipy", "pyarrow")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


def mlflow_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The experiment id for ``name``, created (with its artifact location) when missing.

    The experiment is typed for model training (``mlflow.experimentKind``): untyped, MLflow 3's
    UI opens it in its GenAI view (traces, latency, tokens).
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING}
        )
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
) -> RegisteredVersion:
    """Log one training run (params, metrics, figures, reference data, model) and register
    the model as a new version of ``name`` carrying ``version_tags``."""
    signature = infer_signature(input_example, model.predict(input_example))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags) as run:
        mlflow.log_params({key: _param_text(value) for key, value in params.items()})
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
        for figure_name, figure in figures.items():
            mlflow.log_figure(figure, f"plots/{figure_name}.png")
        for path in reference_files.values():
            mlflow.log_artifact(str(path), artifact_path=REFERENCE_DIR)
        logged = mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=input_example.head(5),
            serialization_format="skops",
            skops_trusted_types=trusted_types,
            pip_requirements=serving_requirements(),
        )
        run_id = run.info.run_id
    registered = mlflow.register_model(logged.model_uri, name, tags=version_tags)
    return RegisteredVersion(
        name=name,
        version=str(registered.version),
        run_id=run_id,
        model_uri=f"models:/{name}/{registered.version}",
    )


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {name!r} has no version {version}") from exc


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or ``None`` (also when the model is not registered)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def require_champion(client: MlflowClient, name: str) -> ModelVersion:
    champion = version_by_alias(client, name, CHAMPION)
    if champion is None:
        raise RegistryError(
            f"project {name!r} has no champion model yet: run 'loopml train {name}' first"
        )
    return champion


def set_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    client.set_registered_model_alias(name, alias, str(version))


def clear_alias(client: MlflowClient, name: str, alias: str) -> None:
    with contextlib.suppress(MlflowException):
        client.delete_registered_model_alias(name, alias)


def set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def version_metrics(model_version: ModelVersion, prefix: str = "test_") -> dict[str, float]:
    """Held-out metrics recorded as ``loopml.test_<metric>`` tags on a version."""
    start = f"{TAG_PREFIX}{prefix}"
    return {
        key[len(start) :]: float(value)
        for key, value in model_version.tags.items()
        if key.startswith(start)
    }


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return sorted(versions, key=lambda v: int(v.version))


def load_model(model_uri: str) -> Any:
    """The scikit-learn model behind ``model_uri`` (``models:/NAME@champion``, ``.../3``)."""
    return mlflow.sklearn.load_model(model_uri)


def load_version_model(model_version: ModelVersion, positive_label: Any = None) -> Any:
    """The model of a registered version, ready to predict with its own ``predict``.

    Versions registered before the decision threshold moved into the artifact hold a bare
    pipeline and the threshold as the ``loopml.threshold`` tag: they are wrapped here, once, so
    no caller reads the tag. Pass the project's ``positive_label`` (binary projects).
    """
    model = load_model(f"models:/{model_version.name}/{model_version.version}")
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
