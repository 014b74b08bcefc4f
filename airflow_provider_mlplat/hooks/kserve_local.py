"""The local rollout target: the platform's KServe model server, versions loaded by name, traffic split per deployment."""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_mlplat.exceptions import MLPlatServiceUnavailable, RolloutFailed
from airflow_provider_mlplat.hooks.kserve_target import Deployed, Expectation, RolloutTarget

log = logging.getLogger(__name__)
#: seconds a local model load may take (download from MLflow + import)
LOAD_TIMEOUT = 600


class LocalModelServerTarget(RolloutTarget):
    """The platform's KServe model server: versions loaded by name, traffic split per deployment."""

    kind = "local"
    metrics = (
        "mlplat_inference_requests_total",
        'status_code=~"5.."',
        "mlplat_inference_request_duration_seconds",
        1.0,
    )

    @property
    def url(self) -> str:
        """Base URL of the model server."""
        return self.config.url  # type: ignore[return-value]

    def _request(self, method: str, path: str, timeout: float = 30, **kwargs: Any):
        import httpx

        try:
            return httpx.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        except httpx.HTTPError as err:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {method} {path} failed: {err}"
            ) from None

    def _call(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, timeout, **kwargs)
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {method} {path} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def current(self, name: str) -> Deployed | None:
        """The deployment's split, from the server's deployment API."""
        response = self._request("GET", f"/mlplat/v1/deployments/{name}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(
                f"model server at {self.url}: {response.status_code} {response.text}"
            )
        state = response.json()
        return Deployed(state["stable"], state["canary"], state["canary_percent"], "local")

    def stage(self, name, model, current, origin, direct):
        """Load the version into the server (no traffic yet)."""
        model_id = f"{model.model_name}@{model.version}"
        self._call("POST", f"/v2/repository/models/{model_id}/load", timeout=LOAD_TIMEOUT)
        return Expectation(model=model_id)

    def _put(self, name: str, model_name: str, stable: str, canary: str | None, percent: int) -> Expectation:
        body = {"model_name": model_name, "stable": stable, "canary": canary, "canary_percent": percent}
        state = self._call("PUT", f"/mlplat/v1/deployments/{name}", json=body)
        return Expectation(revision=state["revision"])

    def shift(self, name, model, stable, percent):
        """Split the deployment between stable and canary."""
        return self._put(name, model.model_name, stable, model.version, percent)

    def promote(self, name, model, stable):
        """Route everything to the new version and unload the old one."""
        expect = self._put(name, model.model_name, model.version, None, 0)
        if stable is not None and stable != model.version:
            self._unload(f"{model.model_name}@{stable}")
        return expect

    def _unload(self, model_id: str) -> None:
        response = self._request("POST", f"/v2/repository/models/{model_id}/unload")
        if response.status_code >= 400:  # still served by another deployment, or gone: keep going
            log.info("%s stays loaded: %s", model_id, response.text[:200])

    def rollback(self, name, model, stable, previous):
        """Route everything to stable again (or remove a deployment that had none) and unload the version."""
        if stable is not None:
            self._put(name, model.model_name, stable, None, 0)
            done = f"traffic of {name} back to version {stable} (100%)"
        else:
            self.delete(name)
            done = f"deployment {name} removed (it had no earlier version)"
        self._unload(f"{model.model_name}@{model.version}")
        return done

    def delete(self, name):
        """Remove the deployment and unload its versions."""
        response = self._request("DELETE", f"/mlplat/v1/deployments/{name}")
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise MLPlatServiceUnavailable(f"model server: DELETE {name} answered {response.status_code}")
        return True

    def smoke(self, name, model, request):
        """Infer with the version directly, bypassing the deployment's split (not counted as traffic)."""
        response = self._request("POST", f"/v2/models/{model.model_name}@{model.version}/infer", json=request)
        if response.status_code >= 400:
            raise RolloutFailed(
                f"smoke request to {model.model_name}@{model.version} answered "
                f"{response.status_code}: {response.text[:500]}"
            )
        return response.json()

    def selectors(self, name, stable, model):
        """The server's own metrics are labelled by deployment and model version."""
        base = f'deployment="{name}",model_name="{model.model_name}"'
        return {
            "canary": f'{base},model_version="{model.version}"',
            "stable": f'{base},model_version="{stable}"',
        }

    async def readiness(self, name, expect):
        """A staged version is ready when loaded; a split when the server reports its revision ready."""
        import httpx

        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
                if expect.model:
                    response = await client.get(f"/v2/models/{expect.model}/ready")
                    ok = response.status_code == 200 and response.json().get("ready") is True
                    return ("ready" if ok else "pending"), f"{expect.model}: HTTP {response.status_code}"
                response = await client.get(f"/mlplat/v1/deployments/{name}")
        except httpx.HTTPError as err:
            return "pending", f"model server at {self.url} did not answer: {err}"
        if response.status_code != 200:
            return "pending", f"deployment {name}: HTTP {response.status_code}"
        state = response.json()
        if state["revision"] < (expect.revision or 0):
            return "pending", f"revision {state['revision']} < {expect.revision}"
        return (
            "ready" if state["ready"] else "pending"
        ), f"revision {state['revision']} ready={state['ready']}"

    def describe(self, name):
        """URL, revision and traffic from the deployment API."""
        state = self._call("GET", f"/mlplat/v1/deployments/{name}")
        traffic = {state["stable"]: 100 - state["canary_percent"]}
        if state["canary"]:
            traffic[state["canary"]] = state["canary_percent"]
        return {
            "url": f"{self.url}/v2/models/{name}/infer",
            "revision": str(state["revision"]),
            "traffic": traffic,
        }
