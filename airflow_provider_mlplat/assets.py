"""Asset URI builders: one vocabulary for feast://, mlflow://, kserve://, drift:// and predictions:// assets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow.sdk import Asset

if TYPE_CHECKING:
    from urllib.parse import SplitResult

# A path segment: what Feast, MLflow and Kubernetes accept as a name.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

#: scheme -> the path segments an asset URI of that scheme has (after the host part)
URI_SHAPES: dict[str, tuple[str, ...]] = {
    "feast": ("project", "feature_view"),
    "mlflow": ("models", "model_name"),
    "kserve": ("namespace", "name"),
    "drift": ("models", "model_name"),
    "predictions": ("models", "model_name"),
}


def _check(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(
            f"invalid {kind} {value!r} for an asset URI: use letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def _asset(scheme: str, first: str, second: str) -> Asset:
    names = URI_SHAPES[scheme]
    _check(names[0], first)
    _check(names[1], second)
    return Asset(uri=f"{scheme}://{first}/{second}", name=f"{scheme}/{first}/{second}", group="ml")


def feast_feature_view_asset(project: str, feature_view: str) -> Asset:
    """
    The Asset a materialization of one Feast feature view updates: ``feast://<project>/<view>``.

    :param project: Feast project name.
    :param feature_view: feature view name.
    """
    return _asset("feast", project, feature_view)


def mlflow_model_asset(model_name: str) -> Asset:
    """
    The Asset a champion move of a registered model updates: ``mlflow://models/<name>``.

    :param model_name: registered model name.
    """
    return _asset("mlflow", "models", model_name)


def kserve_asset(namespace: str, name: str) -> Asset:
    """
    The Asset a finished rollout updates: ``kserve://<namespace>/<inference service>``.

    :param namespace: Kubernetes namespace (``local`` for the local model server).
    :param name: InferenceService (or local model) name.
    """
    return _asset("kserve", namespace, name)


def drift_asset(model_name: str) -> Asset:
    """
    The Asset a detected drift of a served model updates: ``drift://models/<name>``.

    :param model_name: registered model name whose served traffic drifted.
    """
    return _asset("drift", "models", model_name)


def predictions_asset(model_name: str) -> Asset:
    """
    The Asset a batch scoring run of a registered model updates: ``predictions://models/<name>``.

    :param model_name: registered model name whose predictions were written.
    """
    return _asset("predictions", "models", model_name)


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """
    Validate an asset URI of one of the provider's schemes (registered with Airflow).

    :param uri: the parsed URI Airflow hands over.
    """
    names = URI_SHAPES[uri.scheme]
    parts = [uri.netloc, *[p for p in uri.path.split("/") if p]]
    if len(parts) != 2 or (names[0] == "models" and parts[0] != "models"):
        raise ValueError(
            f"invalid {uri.scheme} asset URI {uri.geturl()!r}: expected "
            f"{uri.scheme}://<{names[0]}>/<{names[1]}>".replace("<models>", "models")
        )
    for kind, value in zip(names, parts, strict=True):
        _check(kind, value)
    return uri
