"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.ci import unavailable
from airflow_provider_mlplat.testing.services import running_platform
from tests.drift_support import TRAINING_HOURS, stats


@pytest.fixture(scope="module")
def drift_env(mlflow_server, tmp_path_factory):
    """A Pushgateway, an inference log folder, a training set; sets the kserve/prometheus connections."""
    import shutil

    if not shutil.which("prometheus-pushgateway"):
        unavailable("the Pushgateway is not installed (Debian: apt-get install prometheus-pushgateway)")
    tmp = tmp_path_factory.mktemp("drift")
    training = stats(TRAINING_HOURS)
    training["completed"] = (training["conv_rate"] > 0.5).astype("int64")
    training.to_parquet(tmp / "training_set.parquet")
    with running_platform(tmp / "platform", ("pushgateway",)) as platform:
        pushgateway = f"http://127.0.0.1:{platform.settings.pushgateway_port}"
        # no Prometheus server needed here: the operator only pushes
        set_connection(
            "prometheus_drift",
            conn_type="prometheus",
            host="http://127.0.0.1:1",
            extra={"pushgateway_url": pushgateway},
        )
        set_connection(
            "kserve_drift",
            conn_type="kserve",
            host="http://127.0.0.1:1",
            extra={"inference_log": str(tmp / "inference-log")},
        )
        yield {
            "training_set": str(tmp / "training_set.parquet"),
            "log": tmp / "inference-log",
            "pushgateway": pushgateway,
        }
