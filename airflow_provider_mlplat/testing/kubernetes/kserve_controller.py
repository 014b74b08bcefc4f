"""A small fake KServe controller for the Kubernetes emulator: moves InferenceService status per generation.

It does what KServe's controller does for the fields the rollout reads, in Serverless mode: each
change of the predictor spec (other than ``canaryTrafficPercent``) creates a Knative revision;
``canaryTrafficPercent`` splits traffic between the last rolled-out revision (tag ``prev``) and the
latest one (tag ``latest``); without it the latest revision takes everything and becomes the rolled-out
one; ``canaryTrafficPercent: 0`` pins all traffic to the last rolled-out revision. Every status it
writes carries ``observedGeneration``, ``PredictorReady``/``Ready`` and the model's ``transitionStatus``.
In RawDeployment/Standard mode there are no revisions: :func:`standard_status` follows KServe's e2e
test of Standard-mode canaries (``spec.canary[]``, one ``status.canaryStatuses`` entry per canary,
the ``CanaryPredictorReady`` condition while there are canaries).

Readiness follows from the spec as in KServe: a runtime that does not exist is ``InvalidSpec`` /
``RuntimeNotRecognized``, a model format no runtime serves ``InvalidSpec`` / ``NoSupportingRuntime``, a
``storageUri`` the storage initializer cannot read ``BlockedByFailedLoad`` / ``ModelLoadFailed`` with its
message. Its validating webhook refuses a ``canaryTrafficPercent`` outside 0-100 (422). With
:class:`~.kserve_pods.KnativePods` each revision runs on the local model server behind a URL of its
own, and the service URL splits requests as the status says.

``behaviour`` (changeable while running) forces an outcome on a valid spec: ``ready``; ``never`` (the new
generation is observed but never becomes ready); ``stale`` (new generations are not observed: the old
Ready stays); ``failed-load``. An exception in its thread fails the test when the controller exits.
In Standard mode ``never`` and ``failed-load`` hit the canaries when there are any (the stable
predictor keeps serving), else the predictor.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator
from airflow_provider_mlplat.testing.kubernetes.kserve_pods import (
    KnativePods,
    StorageError,
    storage_initializer_error,
)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STANDARD_MODES = ("RawDeployment", "Standard")
WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
#: KServe's default ClusterServingRuntimes: model formats and protocol versions each serves
RUNTIMES = {
    "kserve-mlserver": ({"sklearn", "xgboost", "lightgbm", "mlflow"}, {"v2"}),
    "kserve-sklearnserver": ({"sklearn"}, {"v1", "v2"}),
    "kserve-xgbserver": ({"xgboost"}, {"v1", "v2"}),
    "kserve-lgbserver": ({"lightgbm"}, {"v1", "v2"}),
    "kserve-tensorflow-serving": ({"tensorflow"}, {"v1", "grpc-v1"}),
    "kserve-torchserve": ({"pytorch"}, {"v1", "v2", "grpc-v2"}),
    "kserve-tritonserver": ({"tensorrt", "tensorflow", "onnx", "pytorch", "triton"}, {"v2", "grpc-v2"}),
    "kserve-huggingfaceserver": ({"huggingface"}, {"v1", "v2"}),
}


def validate(isvc: dict[str, Any], old: dict[str, Any] | None) -> str | None:
    """KServe's validating webhook, for the fields the rollout writes: a Knative-style error or None."""
    percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    if percent is not None and not 0 <= percent <= 100:
        return f"expected 0 <= {percent} <= 100: spec.predictor.canaryTrafficPercent"
    return None


def spec_failure(predictor: dict[str, Any]) -> tuple[str, str, str] | None:
    """
    What stops KServe from serving a predictor spec, as (transitionStatus, reason, message), else None.

    :param predictor: ``spec.predictor``.
    """
    model = predictor.get("model") or {}
    fmt, protocol = (model.get("modelFormat") or {}).get("name"), model.get("protocolVersion", "v1")
    runtime = model.get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        return "InvalidSpec", "RuntimeNotRecognized", "Waiting for runtime to become available"
    if runtime is not None and protocol not in RUNTIMES[runtime][1]:
        return (
            "InvalidSpec",
            "NoSupportingRuntime",
            "Specified runtime does not support specified protocol version",
        )
    if runtime is not None and fmt not in RUNTIMES[runtime][0]:
        return (
            "InvalidSpec",
            "NoSupportingRuntime",
            "Specified runtime does not support specified framework/version",
        )
    if runtime is None and not any(fmt in f and protocol in p for f, p in RUNTIMES.values()):
        return "InvalidSpec", "NoSupportingRuntime", "No runtime found to support specified framework/version"
    if (message := storage_initializer_error(model.get("storageUri", ""))) is not None:
        return "BlockedByFailedLoad", "ModelLoadFailed", message
    return None


def _condition(kind: str, ok: bool, now: str, reason: str = "") -> dict[str, Any]:
    out = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
    return out | ({"reason": reason, "message": reason} if reason else {})


def _model_status(ok: bool, failed: bool) -> dict[str, Any]:
    if ok:
        return {"transitionStatus": "UpToDate", "copies": {"failedCopies": 0, "totalCopies": 1},
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}}  # fmt: skip
    out: dict[str, Any] = {
        "transitionStatus": "BlockedByFailedLoad" if failed else "InProgress",
        "states": {"activeModelState": "FailedToLoad" if failed else "Loading", "targetModelState": "Loaded"},
    }
    return out | (
        {"lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad model"}} if failed else {}
    )


def standard_status(spec: dict[str, Any], behaviour: str, url: str, now: str) -> dict[str, Any]:
    """
    The status KServe (>= 0.20) writes in Standard mode, without ``observedGeneration``: the stable
    predictor's conditions and model status, and per ``spec.canary`` entry a ``canaryStatuses`` entry
    (name from ``predictor.name``, ready, trafficPercent, modelStatus) plus ``CanaryPredictorReady``
    (reason ``AllCanariesReady``), which goes away with the last canary, as in KServe's e2e test.

    :param spec: the InferenceService's spec.
    :param behaviour: the controller's behaviour (see the module docstring).
    :param url: the service URL.
    :param now: the transition time.
    """
    canaries = spec.get("canary") or []
    failed = behaviour == "failed-load"
    canary_ok = behaviour == "ready"
    stable_ok = canary_ok or bool(canaries)  # a failing canary leaves the stable predictor serving
    reason = "" if stable_ok else "MinimumReplicasUnavailable"
    status: dict[str, Any] = {
        "conditions": [
            _condition("IngressReady", True, now),
            _condition("PredictorReady", stable_ok, now, reason),
            _condition("Ready", stable_ok, now, reason),
        ],
        "modelStatus": _model_status(stable_ok, failed and not canaries),
        "components": {"predictor": {"url": url}},
    }
    if canaries:
        status["conditions"].append(
            _condition(
                "CanaryPredictorReady", canary_ok, now, "AllCanariesReady" if canary_ok else "CanaryNotReady"
            )
        )
        status["canaryStatuses"] = [
            {"name": c["predictor"]["name"], "ready": canary_ok, "trafficPercent": c.get("trafficPercent", 0),
             "modelStatus": _model_status(canary_ok, failed)}
            for c in canaries
        ]  # fmt: skip
    return status


class FakeKServeController:
    """
    Reconciles every InferenceService of the emulator from a background thread.

    :param k8s: the emulator.
    :param url: the URL each revision and the service answer on without ``pods``.
    :param behaviour: how new generations of a valid spec end (see the module docstring).
    :param pods: runs each revision on the local model server behind its own URL (None: no data plane).
    """

    def __init__(self, k8s: K8sEmulator, url: str = "http://trip.example.com", behaviour: str = "ready",
                 pods: KnativePods | None = None) -> None:  # fmt: skip
        self.k8s, self.url, self.behaviour, self.pods = k8s, url, behaviour, pods
        self.revisions: dict[str, list[dict[str, Any]]] = {}
        self.rolled_out: dict[str, int] = {}
        self.previous: dict[str, int] = {}
        self.passes = 0  # reconcile passes over all objects so far (a test waits for one to finish)
        self.error: BaseException | None = None  # what stopped the thread (raised on exit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kserve", daemon=True)

    def __enter__(self) -> FakeKServeController:
        self.k8s.admit(GROUP, VERSION, PLURAL, WEBHOOK, validate)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise AssertionError(f"the fake KServe controller failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.05):
                for isvc in self.k8s.objects(PLURAL):
                    self.reconcile(isvc)
                self.passes += 1
        except BaseException as err:  # kept for __exit__: a thread's exception would only be printed
            self.error = err

    def reconcile(self, isvc: dict[str, Any]) -> None:
        """Write the status of the object's current generation, as KServe would."""
        meta, status = isvc["metadata"], isvc.get("status") or {}
        generation = meta["generation"]
        if status.get("observedGeneration") == generation or self.behaviour == "stale":
            return
        name, now = meta["name"], datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        mode = (meta.get("annotations") or {}).get("serving.kserve.io/deploymentMode", "Serverless")
        if mode in STANDARD_MODES:
            new = {"observedGeneration": generation, "deploymentMode": mode, "url": self.url}
            new |= standard_status(isvc["spec"], self.behaviour, self.url, now)
            self.k8s.set_status(GROUP, VERSION, meta.get("namespace"), PLURAL, name, new)
            return
        predictor = dict(isvc["spec"]["predictor"])
        percent = predictor.pop("canaryTrafficPercent", None)
        revisions = self.revisions.setdefault(name, [])
        if not revisions or revisions[-1] != predictor:
            revisions.append(predictor)
        latest = len(revisions)

        def condition(kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
            out = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}
            return out | ({"reason": reason, "message": f"{reason} for revision {latest}"} if reason else {})

        new = {"observedGeneration": generation, "deploymentMode": mode, "url": self.url}
        failure = spec_failure(predictor) or self._forced_failure()
        urls: dict[int, str] = {}
        if failure is None and self.pods is not None:
            try:
                urls = self._start_pods(meta, latest)
            except (StorageError, RuntimeError) as err:
                failure = "BlockedByFailedLoad", "ModelLoadFailed", str(err)
        if failure is not None:
            new["conditions"] = [condition(k, False, "RevisionMissing") for k in ("PredictorReady", "Ready")]
            new["modelStatus"] = _failed_model_status(*failure)
        elif self.behaviour == "never":
            new["conditions"] = [condition(k, False, "RevisionMissing") for k in ("PredictorReady", "Ready")]
            new["modelStatus"] = {
                "transitionStatus": "InProgress",
                "states": {"activeModelState": "Loading", "targetModelState": "Loaded"},
            }
        else:
            new["conditions"] = [condition(k, True) for k in ("IngressReady", "PredictorReady", "Ready")]
            new["modelStatus"] = {
                "transitionStatus": "UpToDate",
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                "copies": {"failedCopies": 0, "totalCopies": 1},
            }
            new["components"] = {"predictor": self._serverless(meta, latest, percent, urls)}
            new["url"] = new["components"]["predictor"]["url"]
        self.k8s.set_status(GROUP, VERSION, meta.get("namespace"), PLURAL, name, new)

    def _forced_failure(self) -> tuple[str, str, str] | None:
        if self.behaviour == "failed-load":
            return "BlockedByFailedLoad", "ModelLoadFailed", "bad model"
        return None

    def _start_pods(self, meta: dict[str, Any], latest: int) -> dict[int, str]:
        """Run the latest revision's pod (the earlier ones keep running); URL per revision index."""
        assert self.pods is not None
        name, namespace = meta["name"], meta.get("namespace")
        model_name = (meta.get("labels") or {}).get("mlplat.io/model-name", "")
        storage = self.revisions[name][latest - 1]["model"]["storageUri"]
        version = self.pods.resolve(storage, model_name)
        self.pods.start(namespace, name, _revision(name, latest), model_name, version)
        return {i: p.url for i in range(1, latest + 1) if (p := self.pods.revisions.get(_revision(name, i)))}

    def _serverless(
        self, meta: dict[str, Any], latest: int, percent: int | None, urls: dict[int, str]
    ) -> dict:
        name = meta["name"]
        rolled = self.rolled_out.get(name)
        if percent is None or rolled is None:  # promoted (or first): latest takes all and is rolled out
            if rolled is not None and rolled != latest:
                self.previous[name] = rolled
            rolled = self.rolled_out[name] = latest
        if rolled == latest:
            traffic = [{"revisionName": _revision(name, latest), "percent": 100, "latestRevision": True,
                        "tag": "latest", "url": urls.get(latest, self.url)}]  # fmt: skip
        else:
            traffic = [
                {"revisionName": _revision(name, rolled), "percent": 100 - percent, "tag": "prev",
                 "url": urls.get(rolled, self.url)},
                {"revisionName": _revision(name, latest), "percent": percent, "latestRevision": True, "tag": "latest",
                 "url": urls.get(latest, self.url)},
            ]  # fmt: skip
        url = self.url
        if self.pods is not None:
            url = self.pods.route(
                meta.get("namespace"), name, [(t["revisionName"], t["percent"]) for t in traffic]
            )
        out: dict[str, Any] = {
            "latestCreatedRevision": _revision(name, latest),
            "latestReadyRevision": _revision(name, latest),
            "latestRolledoutRevision": _revision(name, rolled),
            "url": url,
            "traffic": traffic,
        }
        if name in self.previous:
            out["previousRolledoutRevision"] = _revision(name, self.previous[name])
        return out


def _revision(name: str, index: int) -> str:
    return f"{name}-predictor-{index:05d}"


def _failed_model_status(transition: str, reason: str, message: str) -> dict[str, Any]:
    active = "FailedToLoad" if transition == "BlockedByFailedLoad" else ""
    return {
        "transitionStatus": transition,
        "states": {"activeModelState": active, "targetModelState": "FailedToLoad"},
        "lastFailureInfo": {"reason": reason, "message": message},
    }
