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
