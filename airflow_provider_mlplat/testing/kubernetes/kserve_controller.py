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

``behaviour`` (changeable while running): ``ready``; ``never`` (the new generation is observed but never
becomes ready); ``stale`` (new generations are not observed: the old Ready stays); ``failed-load``.
In Standard mode ``never`` and ``failed-load`` hit the canaries when there are any (the stable
predictor keeps serving), else the predictor.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STANDARD_MODES = ("RawDeployment", "Standard")


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
    :param url: the URL each revision and the service answer on (status ``url`` and traffic tag URLs).
    :param behaviour: how new generations end (see the module docstring).
    """

    def __init__(
        self, k8s: K8sEmulator, url: str = "http://trip.example.com", behaviour: str = "ready"
    ) -> None:
        self.k8s, self.url, self.behaviour = k8s, url, behaviour
        self.revisions: dict[str, list[dict[str, Any]]] = {}
        self.rolled_out: dict[str, int] = {}
        self.previous: dict[str, int] = {}
        self.passes = 0  # reconcile passes over all objects so far (a test waits for one to finish)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kserve", daemon=True)

    def __enter__(self) -> FakeKServeController:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for isvc in self.k8s.objects(PLURAL):
                self.reconcile(isvc)
            self.passes += 1

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
        if self.behaviour in ("never", "failed-load"):
            failed = self.behaviour == "failed-load"
            new["conditions"] = [
                condition("PredictorReady", False, "RevisionMissing"),
                condition("Ready", False, "RevisionMissing"),
            ]
            new["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad" if failed else "InProgress",
                "states": {
                    "activeModelState": "FailedToLoad" if failed else "Loading",
                    "targetModelState": "Loaded",
                },
            }
            if failed:
                new["modelStatus"]["lastFailureInfo"] = {"reason": "ModelLoadFailed", "message": "bad model"}
        else:
            new["conditions"] = [condition(k, True) for k in ("IngressReady", "PredictorReady", "Ready")]
            new["modelStatus"] = {
                "transitionStatus": "UpToDate",
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                "copies": {"failedCopies": 0, "totalCopies": 1},
            }
            new["components"] = {"predictor": self._serverless(name, latest, percent)}
        self.k8s.set_status(GROUP, VERSION, meta.get("namespace"), PLURAL, name, new)

    def _serverless(self, name: str, latest: int, percent: int | None) -> dict[str, Any]:
        def revision(index: int) -> str:
            return f"{name}-predictor-{index:05d}"

        rolled = self.rolled_out.get(name)
        if percent is None or rolled is None:  # promoted (or first): latest takes all and is rolled out
            if rolled is not None and rolled != latest:
                self.previous[name] = rolled
            rolled = self.rolled_out[name] = latest
        out: dict[str, Any] = {
            "latestCreatedRevision": revision(latest),
            "latestReadyRevision": revision(latest),
            "latestRolledoutRevision": revision(rolled),
            "url": self.url,
        }
        if name in self.previous:
            out["previousRolledoutRevision"] = revision(self.previous[name])
        if rolled == latest:
            out["traffic"] = [{"revisionName": revision(latest), "percent": 100, "latestRevision": True,
                               "tag": "latest", "url": self.url}]  # fmt: skip
        else:
            out["traffic"] = [
                {"revisionName": revision(rolled), "percent": 100 - percent, "tag": "prev", "url": self.url},
                {"revisionName": revision(latest), "percent": percent, "latestRevision": True, "tag": "latest",
                 "url": self.url},
            ]  # fmt: skip
        return out
