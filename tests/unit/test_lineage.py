"""OpenLineage: Asset URIs as datasets, the facets operators report, the provider's registration."""

from __future__ import annotations

import pytest
from airflow.sdk import Asset

from airflow_provider_mlplat import get_provider_info
from airflow_provider_mlplat.lineage import (
    LineageDataset,
    LineageMixin,
    asset_to_openlineage,
    namespace_and_name,
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("feast://rides/driver_hourly_stats", ("feast://rides", "driver_hourly_stats")),
        ("mlflow://models/trip_completion", ("mlflow://models", "trip_completion")),
        ("kserve://local/trip-completion", ("kserve://local", "trip-completion")),
        ("drift://models/trip_completion", ("drift://models", "trip_completion")),
        ("s3://bucket/runs/a/training_set.parquet", ("s3://bucket", "runs/a/training_set.parquet")),
        ("file:///data/train.parquet", ("file", "/data/train.parquet")),
        ("/data/train.parquet", ("file", "/data/train.parquet")),
    ],
)
def test_datasets_are_named_by_openlineage_conventions(uri, expected):
    assert namespace_and_name(uri) == expected


def test_every_asset_scheme_has_a_converter():
    [uris] = get_provider_info()["asset-uris"]
    assert uris["to_openlineage_converter"] == "airflow_provider_mlplat.lineage.asset_to_openlineage"
    dataset = asset_to_openlineage(Asset("feast://rides/driver_profile"), None)
    assert (dataset.namespace, dataset.name) == ("feast://rides", "driver_profile")


def test_recorded_lineage_becomes_datasets_with_version_and_facts():
    from openlineage.client.serde import Serde

    class Op(LineageMixin):
        pass

    op = Op()
    assert op.get_openlineage_facets_on_complete(None).outputs == []  # nothing recorded: no datasets
    op.record_lineage(
        inputs=[LineageDataset("/t/train.parquet", version="sha256:ab")],
        outputs=[LineageDataset("mlflow://models/m", "3", {"decision": "promoted", "metrics": {"auc": 0.9}})],
    )
    lineage = op.get_openlineage_facets_on_complete(None)
    [source], [model] = lineage.inputs, lineage.outputs
    assert (source.namespace, source.name) == ("file", "/t/train.parquet")
    assert source.facets["version"].datasetVersion == "sha256:ab" and "mlplat" not in source.facets
    event = Serde.to_dict(model)
    assert event["facets"]["version"]["datasetVersion"] == "3"
    assert event["facets"]["mlplat"]["decision"] == "promoted"
    assert event["facets"]["mlplat"]["metrics"] == {"auc": 0.9}
