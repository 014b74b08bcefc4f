"""Exceptions shared by every integration of the ML platform provider."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class MLPlatError(AirflowException):
    """Base class of every error the provider raises on purpose."""


class MLPlatConfigError(MLPlatError):
    """A parameter, connection field or file is invalid; the message names it and what is valid."""


class MLPlatMissingExtra(MLPlatConfigError):
    """A task needs an SDK that the environment lacks; the message names the extra to install."""


class MLPlatServiceUnavailable(MLPlatError):
    """A platform service (MLflow, Ray, Feast store, model server, ...) did not answer."""


class MLPlatValidationFailed(MLPlatError):
    """A quality gate failed; the message carries the evidence."""


class DriftDetected(MLPlatError):
    """Data drift exceeded the configured threshold."""


class RolloutFailed(MLPlatError):
    """A rollout was rolled back; the message says which check failed."""
