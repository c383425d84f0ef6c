"""A long-lived process deserialises a checked model once; the check itself runs at every load."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from loopml import registry
from loopml.errors import ModelRefused
from loopml.registry import get_version, load_version
from tests.faults.tiny import register_tiny


def test_a_checked_model_is_deserialised_once_and_a_tampered_one_still_refused(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the store's default artifact root is relative
    monkeypatch.setattr(registry, "_verified_models", {})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registered = register_tiny(uri, "cached")
    client = MlflowClient(uri)
    model_version = get_version(client, "cached", registered.version)
    deserialised = []
    real_load = registry._load_skops

    def counting_load(*args, **kwargs):
        deserialised.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(registry, "_load_skops", counting_load)

    first = load_version(client, model_version)
    assert load_version(client, model_version) is first
    assert len(deserialised) == 1

    (model_file,) = tmp_path.rglob("model.skops")
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(ModelRefused, match="does not match the file registered"):
        load_version(client, model_version)


def test_the_warm_process_preloads_a_champion_and_says_when_there_is_none(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from loopml.cli.warm import preload_champion

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_verified_models", {})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = SimpleNamespace(mlflow_tracking_uri=uri, mlflow_registry_uri=uri)
    registered = register_tiny(uri, "preloaded")

    line = preload_champion(settings, "preloaded")
    assert line == "loopml warm: preloaded has no champion to load yet"
    assert registry._verified_models == {}

    MlflowClient(uri).set_registered_model_alias("preloaded", "champion", registered.version)
    line = preload_champion(settings, "preloaded")
    assert line.startswith(f"loopml warm: preloaded v{registered.version} (champion) loaded in ")
    (model,) = registry._verified_models.values()
    # The command that follows gets that very object (after its own check of the file).
    client = MlflowClient(uri)
    assert load_version(client, get_version(client, "preloaded", registered.version)) is model

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused port, at once
    line = preload_champion(
        SimpleNamespace(
            mlflow_tracking_uri="http://127.0.0.1:9", mlflow_registry_uri="http://127.0.0.1:9"
        ),
        "preloaded",
    )
    assert line.startswith("loopml warm: preloaded's champion not loaded (")
