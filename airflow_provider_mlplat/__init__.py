"""Apache Airflow provider for an end-to-end open-source ML platform."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PKG = "airflow_provider_mlplat"


def _text(label: str, password: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": ["string", "null"]}
    if password:
        schema["format"] = "password"
    return {"label": label, "schema": schema}


#: Connection types the provider owns: extras (an allowlist, by name) and UI behaviour.
CONNECTION_TYPES: dict[str, dict[str, Any]] = {
    "mlflow": {
        "hook": "hooks.mlflow.MLflowHook",
        "name": "MLflow tracking server",
        "fields": {
            "registry_uri": _text("Registry URI (defaults to the tracking URI)"),
            "timeout": _text("Seconds within which an unreachable server fails the task (default 30)"),
        },
        "behaviour": {
            "hidden-fields": ["schema", "port", "extra"],
            "relabeling": {"host": "Tracking URI", "login": "Username", "password": "Password or token"},
            "placeholders": {"host": "http://127.0.0.1:5000"},
        },
    },
    "feast": {
        "hook": "hooks.feast.FeastHook",
        "name": "Feast feature store",
        "fields": {
            "repo_path": _text("Feature repo path (folder holding feature_store.yaml)"),
            "online_store": _text('Online store override (JSON, e.g. {"type": "redis", ...})'),
            "offline_store": _text("Offline store override (JSON)"),
            "batch_engine": _text('Batch engine override (JSON, e.g. {"type": "ray.engine"})'),
            "registry": _text("Registry path or URI override"),
            "data_dir": _text("Raw data folder the repo's file sources read (default: <repo>/data)"),
            "ray_conn_id": _text("Ray connection whose token the Ray batch engine uses"),
        },
        "behaviour": {"hidden-fields": ["host", "schema", "login", "password", "port", "extra"]},
    },
    "ray": {
        "hook": "hooks.ray_target.RayConnectionHook",
        "name": "Ray cluster (Job Submission API) or KubeRay",
        "fields": {
            "kubernetes_conn_id": _text("Kubernetes connection id (set: run jobs as KubeRay RayJobs)"),
            "namespace": _text("Namespace of RayJobs (default: the Kubernetes connection's)"),
            "env_secret": _text(
                "KubeRay: Secret whose keys become the Ray pods' environment (MLflow credentials)"
            ),
        },
        "behaviour": {
            "hidden-fields": ["schema", "login", "port", "extra"],
            "relabeling": {
                "host": "Dashboard address (KubeRay: optional, overrides the RayJob's)",
                "password": "Auth token",
            },
            "placeholders": {"host": "http://127.0.0.1:8265", "namespace": "default"},
        },
    },
    "kserve": {
        "hook": "hooks.kserve.KServeHook",
        "name": "KServe (model server or Kubernetes)",
        "fields": {
            "kubernetes_conn_id": _text("Kubernetes connection id (empty: the local model server)"),
            "namespace": _text("Namespace of InferenceServices"),
            "deployment_mode": _text(
                "Cluster's default KServe deployment mode (Serverless/Knative, RawDeployment/Standard)"
            ),
            "logger_url": _text("Request logger sink URL for InferenceServices (inference log)"),
            "mlflow_artifacts_uri": _text(
                "Storage URI behind MLflow's mlflow-artifacts:/ proxy (e.g. s3://...)"
            ),
            "inference_log": _text("Inference log of the local model server: folder or postgresql:// URL"),
            "predictor_url": _text(
                "Standard mode: URL of one predictor's Service, {name} {predictor} {namespace} filled in "
                "(default http://{name}-{predictor}-predictor.{namespace}.svc.cluster.local)"
            ),
        },
        "behaviour": {
            "hidden-fields": ["schema", "login", "password", "port", "extra"],
            "relabeling": {"host": "Model server URL (local target)"},
            "placeholders": {"host": "http://127.0.0.1:8090", "namespace": "default"},
        },
    },
    "prometheus": {
        "hook": "hooks.prometheus.PrometheusHook",
        "name": "Prometheus",
        "fields": {
            "pushgateway_url": _text("Pushgateway URL batch jobs push metrics to (e.g. drift scores)"),
        },
        "behaviour": {
            "hidden-fields": ["schema", "port", "extra"],
            "relabeling": {"host": "URL", "login": "Username", "password": "Password or token"},
            "placeholders": {"host": "http://127.0.0.1:9090"},
        },
    },
}

#: Modules per kind, listed for Airflow's provider manager (relative to the package).
_MODULES: dict[str, list[str]] = {
    "hooks": [
        "hooks.mlflow",
        "hooks.feast",
        "hooks.gx",
        "hooks.ray",
        "hooks.kuberay",
        "hooks.ray_target",
        "hooks.kserve",
        "hooks.kserve_target",
        "hooks.kserve_local",
        "hooks.kserve_isvc",
        "hooks.kserve_knative",
        "hooks.kserve_standard",
        "hooks.prometheus",
        "hooks.evidently",
    ],
    "operators": [
        "operators.feast",
        "operators.gx",
        "operators.mlflow",
        "operators.ray",
        "operators.kserve",
        "operators.evidently",
    ],
    "sensors": ["sensors.feast", "sensors.mlflow"],
    "triggers": ["triggers.feast", "triggers.mlflow", "triggers.ray", "triggers.kserve"],
}
_EXTRA_LINKS: list[str] = [
    "links.mlflow.MLflowRunLink",
    "links.mlflow.MLflowModelVersionLink",
    "links.ray.RayJobLink",
    "links.evidently.EvidentlyReportLink",
    "links.kserve.KServeEndpointLink",
]


def connection_fields(conn_type: str) -> tuple[str, ...]:
    """
    The extras a connection type accepts, by name.

    :param conn_type: one of :data:`CONNECTION_TYPES`.
    """
    return tuple(CONNECTION_TYPES[conn_type]["fields"])


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's provider manager (entry point ``apache_airflow_provider``)."""
    integration = "ML Platform"
    return {
        "package-name": "airflow-provider-mlplat",
        "name": "ML Platform",
        "description": "Feast, Great Expectations, Ray/KubeRay, MLflow, KServe, Evidently and "
        "Prometheus as one end-to-end ML platform, chained by Assets.",
        "versions": [__version__],
        "integrations": [{"integration-name": integration, "tags": ["software"]}],
        **{
            kind: [{"integration-name": integration, "python-modules": [f"{_PKG}.{m}" for m in mods]}]
            for kind, mods in _MODULES.items()
            if mods
        },
        "connection-types": [
            {
                "connection-type": conn_type,
                "hook-class-name": f"{_PKG}.{spec['hook']}",
                "hook-name": spec["name"],
                "conn-fields": spec["fields"],
                "ui-field-behaviour": spec["behaviour"],
            }
            for conn_type, spec in CONNECTION_TYPES.items()
        ],
        "asset-uris": [
            {
                "schemes": ["feast", "mlflow", "kserve", "drift", "predictions"],
                "handler": f"{_PKG}.assets.sanitize_uri",
                "to_openlineage_converter": f"{_PKG}.lineage.asset_to_openlineage",
            }
        ],
        "extra-links": [f"{_PKG}.{link}" for link in _EXTRA_LINKS],
        "config": {
            "mlplat": {
                "description": "Settings of the ML platform provider.",
                "options": {
                    "artifact_root": {
                        "description": "Where operators write data and reports (training sets, "
                        "validation results, drift reports): a local path or an object storage URI.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://ml-artifacts/airflow",
                        "default": "{AIRFLOW_HOME}/mlplat-artifacts",
                    },
                    "artifact_conn_id": {
                        "description": "The connection (type aws) for object storage URIs that name "
                        "none, e.g. an s3:// artifact_root; its extra may set endpoint_url for an "
                        "S3-compatible server. Empty: the SDK's default credentials.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "aws_default",
                        "default": None,
                    },
                },
            }
        },
    }
