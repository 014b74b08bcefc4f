"""The model server's pieces without a server: the weighted router and the inference log, version names."""

from __future__ import annotations

import asyncio

import pytest


def test_router_splits_exactly_and_logs_every_row(tmp_path):
    from mlplat_model_server.inference_log import InferenceLogWriter, read_inference_log
    from mlplat_model_server.models import DeploymentRouter, MLflowVersionModel

    class Fixed(MLflowVersionModel):
        def __init__(self, version):
            super().__init__("m", version)
            self.ready = True

        def predict_frame(self, frame):
            return [int(self.version)] * len(frame)

    log = InferenceLogWriter(tmp_path, flush_interval=0.05).start()
    router = DeploymentRouter("d", Fixed("1"), Fixed("2"), canary_percent=25, inference_log=log)

    async def send(n):
        return [
            await router({"instances": [{"x": i}, {"x": -i}]}, {"x-request-id": str(i)}) for i in range(n)
        ]

    answers = asyncio.run(send(40))
    log.close()
    assert [headers["x-mlplat-model-version"] for _, headers in answers].count("2") == 10
    assert answers[3][0] == {"predictions": [2, 2]}  # the 4th request of every 4 goes to the canary
    frame = read_inference_log(tmp_path, "d")
    assert frame.shape[0] == 80 and frame["model_version"].value_counts().to_dict() == {"1": 60, "2": 20}
    assert list(frame.loc[:1, "x"]) == [0, 0] and frame.loc[7, "request_id"] == "3"
    assert (frame.loc[7, "prediction"], frame.loc[7, "status_code"]) == (2, 200)


def test_version_names_must_carry_a_version_number():
    from mlplat_model_server.models import parse_version_model_name

    assert parse_version_model_name("trip_completion@12") == ("trip_completion", "12")
    with pytest.raises(
        ValueError, match="'trip_completion@champion' is not '<registered model>@<version number>'"
    ):
        parse_version_model_name("trip_completion@champion")
