"""Domain exceptions. Each carries what a caller (or a test) needs to see why it was raised."""

from __future__ import annotations

from typing import Any


class LoopmlError(Exception):
    """Base class: the message is one sentence a user can act on."""


class DataError(LoopmlError):
    """The input table cannot be used (missing, empty, unreadable, wrong shape)."""


class ConfigError(LoopmlError):
    """A project config is missing or invalid."""


class ProjectNotFound(ConfigError):
    """No config for the named project."""


class ValidationFailed(LoopmlError):
    """A batch failed its expectation suite; ``result`` holds the per-expectation outcome."""

    def __init__(self, message: str, result: Any, quarantine_path: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.quarantine_path = quarantine_path


class RegistryError(LoopmlError):
    """The model registry does not hold what was asked for (no champion, unknown version)."""


class ModelRefused(RegistryError):
    """A registered model's artifact was refused before loading (tampered or pickle format)."""

    def __init__(self, message: str, *, name: str, version: str, reason: str) -> None:
        super().__init__(message)
        self.name = name
        self.version = version
        self.reason = reason


class GateRefused(LoopmlError):
    """A promotion gate refused a model version; ``decision`` holds the comparison."""

    def __init__(self, message: str, decision: Any) -> None:
        super().__init__(message)
        self.decision = decision


class StackError(LoopmlError):
    """The stack cannot start or one of its services stopped unexpectedly."""
