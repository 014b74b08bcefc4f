"""Asset URI builders and the URI handler Airflow calls for the provider's schemes."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from airflow.sdk import Asset

from airflow_provider_mlplat.assets import (
    drift_asset,
    feast_feature_view_asset,
    kserve_asset,
    mlflow_model_asset,
    predictions_asset,
    sanitize_uri,
)


def test_builders_make_one_vocabulary():
    assert feast_feature_view_asset("rides", "driver_hourly").uri == "feast://rides/driver_hourly"
    assert mlflow_model_asset("eta").uri == "mlflow://models/eta"
    assert kserve_asset("local", "eta").uri == "kserve://local/eta"
    assert drift_asset("eta").uri == "drift://models/eta"
    assert predictions_asset("eta").uri == "predictions://models/eta"
    assert predictions_asset("eta").name == "predictions/models/eta"
    assert mlflow_model_asset("eta").name == "mlflow/models/eta"
    assert mlflow_model_asset("eta") == Asset(uri="mlflow://models/eta", name="mlflow/models/eta", group="ml")


@pytest.mark.parametrize("bad", ["", "has space", "a/b", "-lead", None])
def test_builders_reject_bad_names_naming_them(bad):
    with pytest.raises(ValueError, match="invalid model_name"):
        mlflow_model_asset(bad)


@pytest.mark.parametrize(
    "uri",
    [
        "feast://rides/driver_hourly",
        "mlflow://models/eta",
        "kserve://ns/eta",
        "drift://models/eta",
        "predictions://models/eta",
    ],
)
def test_handler_accepts_well_formed_uris(uri):
    assert sanitize_uri(urlsplit(uri)).geturl() == uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("feast://rides", "feast://<project>/<feature_view>"),
        ("mlflow://eta/1", "mlflow://models/<model_name>"),
        ("kserve://ns/eta/extra", "kserve://<namespace>/<name>"),
        ("drift://models/bad name", "invalid model_name"),
        ("predictions://eta", "predictions://models/<model_name>"),
    ],
)
def test_handler_rejects_malformed_uris(uri, expected):
    with pytest.raises(ValueError, match=expected.replace("<", "<").replace(".", r"\.")):
        sanitize_uri(urlsplit(uri))


def test_airflow_applies_the_handler_when_an_asset_is_declared():
    with pytest.raises(ValueError, match="feast://<project>/<feature_view>"):
        Asset(uri="feast://only-a-project")


def test_airflow_knows_the_predictions_scheme():
    with pytest.raises(ValueError, match="predictions://models/<model_name>"):
        Asset(uri="predictions://trip_completion")
    assert Asset(uri="predictions://models/trip_completion").uri == "predictions://models/trip_completion"
