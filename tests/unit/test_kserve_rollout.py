"""Rollout logic without services: canary gate, input checks, V2 requests, readiness, inference log, platform wiring."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from airflow_provider_mlplat.exceptions import MLPlatConfigError
from airflow_provider_mlplat.hooks.kserve import KServeHook
from airflow_provider_mlplat.hooks.kserve_isvc import isvc_readiness
from airflow_provider_mlplat.hooks.kserve_target import TargetConfig
from airflow_provider_mlplat.operators.kserve import CanaryAnalysis, KServeRolloutOperator, v2_request
from airflow_provider_mlplat.testing.airflow import set_connection
from airflow_provider_mlplat.testing.ci import unavailable


def sample(requests=100, errors=0, p99=0.002):
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "p99": p99,
    }


@pytest.mark.parametrize(
    ("canary", "stable", "expected"),
    [
        (sample(), sample(), []),
        (
            sample(requests=4),
            sample(),
            ["canary served 4 requests in the window, fewer than min_requests=10"],
        ),
        (sample(errors=2), sample(errors=1), ["canary error rate 0.020 (2/100) > max_error_rate 0.01"]),
        (sample(errors=1), sample(errors=0), []),  # 1% is allowed, and only 0.01 above stable
        (sample(p99=0.6), sample(p99=0.5), ["canary p99 latency 600.0 ms > max_p99_seconds 0.5"]),
        (sample(p99=0.015), sample(p99=0.001), []),  # below 2 x the 10 ms floor: noise
        (
            sample(p99=0.05),
            sample(p99=0.002),
            ["canary p99 latency 50.0 ms > 2.0 x stable 2.0 ms (floor 10 ms)"],
        ),
        (sample(p99=0.05), None, []),  # nothing to compare with
    ],
)
def test_canary_gate(canary, stable, expected):
    assert CanaryAnalysis().judge(canary, stable) == expected


def test_canary_gate_relative_error_rate():
    analysis = CanaryAnalysis(max_error_rate=0.5, max_error_rate_increase=0.05)
    assert analysis.judge(sample(errors=20), sample(errors=10)) == [
        "canary error rate 0.200 exceeds stable 0.100 by more than max_error_rate_increase 0.05"
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window": 3}, r"unknown analysis setting\(s\) \['window'\]; valid: \['max_error_rate'"),
        ({"max_p99_ratio": -1}, "analysis max_p99_ratio=-1 must be a number >= 0"),
        ({"min_requests": "10"}, "analysis min_requests='10' must be a number >= 0"),
    ],
)
def test_analysis_settings_are_checked(values, message):
    with pytest.raises(MLPlatConfigError, match=message):
        CanaryAnalysis.from_dict(values)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canary_steps": [10, 50]}, r"canary_steps=\[10, 50\] must be increasing whole percentages"),
        ({"canary_steps": [0, 100]}, "must be increasing"),
        ({"canary_steps": [10, 10, 100]}, "must be increasing"),
        ({"canary_steps": [10.5, 100]}, "must be increasing"),
        ({"strategy": "shadow"}, "strategy='shadow'; valid: 'canary', 'direct'"),
        ({"model_version": "latest"}, "model_version='latest' must be a version number"),
        ({"deployment_name": "a" * 46}, "not a valid InferenceService name"),
        ({"smoke_input": [1, 2]}, "smoke_input must be a non-empty list of row objects"),
        ({"model_name": ""}, "model_name='': name the registered MLflow model to roll out"),
        ({"previous_alias": "champion"}, "model_alias and previous_alias are both 'champion'"),
    ],
)
def test_operator_rejects_bad_input_before_any_io(kwargs, message):
    kwargs = {"model_name": "trip_completion", **kwargs}
    operator = KServeRolloutOperator(task_id="rollout", kserve_conn_id="no_such_connection", **kwargs)
    with pytest.raises(MLPlatConfigError, match=message):
        operator.execute({})


def test_operator_defaults_and_template_fields():
    with pytest.raises(TypeError, match="model_name"):  # no demo model as a default
        KServeRolloutOperator(task_id="rollout")
    operator = KServeRolloutOperator(task_id="rollout", model_name="trip_completion")
    assert operator._validate() == ("trip-completion", [10, 50, 100], CanaryAnalysis())
    assert (operator.model_alias, operator.previous_alias) == ("champion", "previous-champion")
    assert {"model_version", "canary_steps", "analysis", "strategy", "previous_alias"} <= set(
        operator.template_fields
    )
    assert [getattr(o, "name", None) for o in operator.outlets] == ["kserve-rollout"]


def test_v2_request_types_each_column():
    request = v2_request([{"a": 1, "b": 0.5, "c": "x", "d": True}, {"a": 2, "b": 1, "c": "y", "d": False}])
    assert request == {
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
            {"name": "b", "shape": [2], "datatype": "FP64", "data": [0.5, 1.0]},
            {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
            {"name": "d", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        ],
        "parameters": {"content_type": "pd"},
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, ("pending", "generation 2 not observed yet (observedGeneration=0)")),
        (
            {
                "observedGeneration": 2,
                "conditions": [{"type": "PredictorReady", "status": "False", "reason": "RevisionMissing"}],
            },
            ("pending", "PredictorReady is False: RevisionMissing"),
        ),
        (
            {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "PredictorReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "modelStatus": {"transitionStatus": "InProgress"},
            },
            ("pending", "model transitionStatus is InProgress"),
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [
                    {"type": "PredictorReady", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "modelStatus": {"transitionStatus": "UpToDate"},
            },
            ("ready", "generation 2 ready"),
        ),
        (
            {
                "observedGeneration": 2,
                "modelStatus": {
                    "transitionStatus": "InvalidSpec",
                    "lastFailureInfo": {"reason": "InvalidPredictorSpec", "message": "no runtime"},
                },
            },
            ("failed", "model InvalidSpec: InvalidPredictorSpec no runtime"),
        ),
    ],
)
def test_isvc_readiness(status, expected):
    assert isvc_readiness({"metadata": {"generation": 2}, "status": status}, 2) == expected


def test_kserve_connection_decides_the_target():
    set_connection("kserve_local_t", conn_type="kserve", host="http://127.0.0.1:8090")
    assert KServeHook("kserve_local_t").target_config() == TargetConfig(
        "local", "local", url="http://127.0.0.1:8090"
    )
    set_connection("kserve_local_port", conn_type="kserve", host="127.0.0.1")
    assert KServeHook("kserve_local_port").server_url == "http://127.0.0.1:8090"  # the model server's port
    set_connection(
        "kserve_k8s_t",
        conn_type="kserve",
        extra={
            "kubernetes_conn_id": "k8s",
            "namespace": "ml",
            "deployment_mode": "Serverless",
            "mlflow_artifacts_uri": "s3://bucket/mlflow/",
        },
    )
    hook = KServeHook("kserve_k8s_t")
    assert hook.target_config().kind == "knative" and hook.target("prod").namespace == "prod"
    assert (
        hook.storage_uri("mlflow-artifacts:/1/models/m-1/artifacts")
        == "s3://bucket/mlflow/1/models/m-1/artifacts"
    )
    assert hook.storage_uri("s3://elsewhere/model") == "s3://elsewhere/model"
    for spelling, kind in [("Knative", "knative"), ("RawDeployment", "standard"), ("Standard", "standard")]:
        set_connection(
            "kserve_k8s_m",
            conn_type="kserve",
            extra={"kubernetes_conn_id": "k8s", "deployment_mode": spelling},
        )
        config = KServeHook("kserve_k8s_m").target_config()
        assert (config.kind, config.deployment_mode) == (kind, spelling)
    set_connection(
        "kserve_k8s_bad", conn_type="kserve", extra={"kubernetes_conn_id": "k8s", "deployment_mode": "Raw"}
    )
    with pytest.raises(
        MLPlatConfigError,
        match="connection 'kserve_k8s_bad' deployment_mode: deployment mode 'Raw' is not one of "
        "Serverless, Knative, RawDeployment, Standard",
    ):
        KServeHook("kserve_k8s_bad").target_config()
    set_connection("kserve_k8s_noroot", conn_type="kserve", extra={"kubernetes_conn_id": "k8s"})
    with pytest.raises(
        MLPlatConfigError, match="set the 'kserve_k8s_noroot' connection's mlflow_artifacts_uri"
    ):
        KServeHook("kserve_k8s_noroot").storage_uri("mlflow-artifacts:/1/x")


def test_plans_round_trip_through_json_and_reject_unknown_fields():
    from airflow_provider_mlplat.hooks.kserve import make_target
    from airflow_provider_mlplat.hooks.kserve_target import (
        AliasConfig,
        Expectation,
        ModelVersionRef,
        RolloutPlan,
    )

    plan = RolloutPlan(
        deployment="tc", target=TargetConfig("standard", "ml", kubernetes_conn_id="k8s", predictor={"minReplicas": 1}),
        model=ModelVersionRef("tc", 3, "s3://m/3"), stable="2", previous={"predictor": {"name": "v2"}},
        strategy="canary", steps=[10, 100], aliases=AliasConfig("mlflow_default", "prod", "prod-previous"),
        origin={"dag_id": "d", "run_id": "r", "task_id": "t", "map_index": -1}, started_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    assert plan.model.version == "3"  # a registry's int version becomes text: compared as text everywhere
    rebuilt = RolloutPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert (
        rebuilt == plan
        and isinstance(rebuilt.target, TargetConfig)
        and isinstance(rebuilt.aliases, AliasConfig)
    )
    assert Expectation.from_dict(Expectation(generation=4, canary="v3", percent=10).to_dict()).percent == 10
    with pytest.raises(ValueError, match=r"Expectation: unknown field\(s\) \['gen'\]; valid: \['canary'"):
        Expectation.from_dict({"gen": 4})
    assert type(make_target(plan.target.to_dict())).__name__ == "StandardTarget"
    with pytest.raises(
        MLPlatConfigError, match=r"rollout target kind 'raw'; valid: \['knative', 'local', 'standard'\]"
    ):
        make_target(TargetConfig("raw", "ml"))


def test_trigger_serializes_and_times_out_on_an_unreachable_server(tmp_path):
    from airflow_provider_mlplat.testing.services import free_port
    from airflow_provider_mlplat.triggers.kserve import KServeInferenceServiceReadyTrigger

    config = {"kind": "local", "namespace": "local", "url": f"http://127.0.0.1:{free_port()}"}
    trigger = KServeInferenceServiceReadyTrigger(config, "d", {"revision": 2}, timeout=0.3, poll_interval=0.1,
                                                 carry={"phase": "step"})  # fmt: skip
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_mlplat.triggers.kserve.KServeInferenceServiceReadyTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs

    async def first():
        async for event in KServeInferenceServiceReadyTrigger(**kwargs).run():
            return event.payload

    event = asyncio.run(first())
    assert (
        event["status"] == "timeout"
        and "did not answer" in event["detail"]
        and event["carry"] == {"phase": "step"}
    )


# -- the inference log and the platform's wiring ------------------------------------------------------


def test_inference_log_reader_windows_and_skips_a_line_being_written(tmp_path):
    from airflow_provider_mlplat.inference_log import InferenceLogWriter, log_file, read_inference_log

    now = datetime.now(UTC)
    writer = InferenceLogWriter(tmp_path)
    records = [
        {"timestamp": (now - timedelta(minutes=m)).isoformat(), "deployment": "d", "model_name": "m",
         "model_version": "1", "request_id": str(m), "status_code": 200, "prediction": 1, "features": {"f": m}}
        for m in (30, 20, 10)
    ]  # fmt: skip
    writer.append(records)
    assert writer.flush() == 3
    with log_file(tmp_path, "d", now.date().isoformat()).open("a") as f:
        f.write('{"timestamp": "half a rec')
    frame = read_inference_log(
        tmp_path, "d", start=now - timedelta(minutes=25), end=now - timedelta(minutes=5)
    )
    assert list(frame["f"]) == [20, 10]
    assert read_inference_log(tmp_path, "nothing").empty


def test_platform_runs_model_server_and_prometheus_on_loopback(tmp_path):
    from mlplat.platform import Platform, Settings

    settings = Settings(home=tmp_path, model_server_port=18090, prometheus_port=19090, mlflow_port=15000,
                        services=("model-server", "prometheus"))  # fmt: skip
    try:
        services = {s.name: s for s in Platform(settings).services()}
    except MLPlatConfigError as err:
        unavailable(f"the platform cannot run Prometheus here: {err}")
    assert services["model-server"].env["MLPLAT_SERVING_HOST"] == "127.0.0.1"
    assert services["model-server"].env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15000"
    prometheus = services["prometheus"]
    assert "--web.listen-address=127.0.0.1:19090" in prometheus.command
    (config,) = prometheus.files.values()
    assert '"127.0.0.1:18090"' in config and '"127.0.0.1:19090"' in config and "${" not in config
    conns = Platform(settings).connections()
    assert conns["kserve_default"]["host"] == "http://127.0.0.1:18090"
    assert conns["prometheus_default"] == {"conn_type": "prometheus", "host": "http://127.0.0.1:19090"}
