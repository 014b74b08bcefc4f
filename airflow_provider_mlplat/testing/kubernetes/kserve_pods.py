"""Knative's data plane for the fake KServe controller, on the local model server.

Each revision is a pod: the storage initializer resolves its ``storageUri`` (failing with KServe's
messages), the model server loads that MLflow version as a deployment named after the revision, and a
queue-proxy of its own (its own URL on 127.0.0.1) forwards to it and counts requests the way Knative's
queue-proxy does (``revision_app_request_count``, ``revision_app_request_latencies`` in ms, labelled
``namespace_name``, ``revision_name``, ``response_code_class``...). The route splits the service URL's
requests between revisions by percent. The counts are pushed to a real Pushgateway, which Prometheus
scrapes, so the provider's canary queries run on series shaped like a cluster's.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.web
import httpx

#: URI prefixes KServe's storage initializer downloads from
STORAGE_PREFIXES = (
    "gs://",
    "s3://",
    "hdfs://",
    "webhdfs://",
    "hf://",
    "pvc://",
    "file://",
    "http://",
    "https://",
)
#: Knative's default latency distribution of the queue-proxy (milliseconds)
LATENCY_BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800, 900, 1000,
                      2000, 5000, 10000, 20000, 50000, 100000)  # fmt: skip
PUSH_JOB = "knative-queue-proxy"


class StorageError(Exception):
    """The storage initializer could not download the model (the pod never starts)."""


def storage_initializer_error(uri: str) -> str | None:
    """KServe's storage initializer message for a URI it cannot read, else None."""
    if uri.startswith(STORAGE_PREFIXES):
        return None
    return (
        f"Cannot recognize storage type for {uri}\n'gs://', 's3://', 'file://', and 'http(s)://' are the current "
        "available storage type."
    )


@dataclass
class Revision:
    """One revision's pod: the model server deployment behind it and its queue-proxy's counters."""

    namespace: str
    service: str
    name: str
    url: str = ""
    # by response code; 200 and 500 from 0, so increase() counts the first of them too (Knative's series
    # appear with their first request, and a window's increase() then misses that one)
    requests: Counter[int] = field(default_factory=lambda: Counter({200: 0, 500: 0}))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))  # +Inf last
    latency_sum_ms: float = 0.0

    def observe(self, code: int, millis: float) -> None:
        """Count one request as the queue-proxy does."""
        self.requests[code] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, millis)] += 1
        self.latency_sum_ms += millis

    def exposition(self) -> str:
        """The revision's queue-proxy metrics in Prometheus text format."""
        base = {
            "namespace_name": self.namespace, "service_name": f"{self.service}-predictor",
            "configuration_name": f"{self.service}-predictor", "revision_name": self.name,
            "pod_name": f"{self.name}-deployment-0", "container_name": "queue-proxy",
        }  # fmt: skip

        def labels(**extra: Any) -> str:
            return "{" + ",".join(f'{k}="{v}"' for k, v in (base | extra).items()) + "}"

        requests, buckets = dict(self.requests), list(self.buckets)  # snapshots: the loop thread counts on
        lines = ["# TYPE revision_app_request_count counter"]
        for code, n in sorted(requests.items()):
            lines.append(
                f"revision_app_request_count{labels(response_code=code, response_code_class=f'{code // 100}xx')} {n}"
            )
        lines.append("# TYPE revision_app_request_latencies histogram")
        cumulative = 0
        for bound, n in zip((*LATENCY_BUCKETS_MS, "+Inf"), buckets, strict=True):
            cumulative += n
            lines.append(f"revision_app_request_latencies_bucket{labels(le=bound)} {cumulative}")
        lines.append(f"revision_app_request_latencies_sum{labels()} {self.latency_sum_ms}")
        lines.append(f"revision_app_request_latencies_count{labels()} {cumulative}")
        return "\n".join(lines) + "\n"


class KnativePods:
    """
    Revisions' pods, queue-proxies and routes on the local model server, served from a background
    thread; pushes the queue-proxy metrics to the Pushgateway every ``push_interval`` seconds.

    :param model_server: the local model server's URL.
    :param mlflow_uri: the MLflow tracking server the model server loads versions from.
    :param buckets: cluster storage prefix -> MLflow artifact prefix it holds (``{"s3://mlplat/artifacts":
        "mlflow-artifacts:"}``: that bucket is the MLflow server's artifact destination).
    :param pushgateway: the Pushgateway's URL (None: metrics are only kept here).
    :param push_interval: seconds between pushes.
    """

    def __init__(self, model_server: str, mlflow_uri: str, buckets: dict[str, str],
                 pushgateway: str | None = None, push_interval: float = 0.5) -> None:  # fmt: skip
        self.model_server, self.mlflow_uri, self.buckets = model_server, mlflow_uri, buckets
        self.pushgateway, self.push_interval = pushgateway, push_interval
        self.revisions: dict[str, Revision] = {}
        self.routes: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (ns, service) -> [(revision, %)]
        self._route_urls: dict[tuple[str, str], str] = {}
        self._sent: Counter[tuple[str, str]] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="knative-pods", daemon=True)
        self._runners: list[aiohttp.web.ServerRunner] = []
        self._session: aiohttp.ClientSession | None = None
        self._stop = threading.Event()
        self._pusher = threading.Thread(target=self._push_loop, name="queue-proxy-push", daemon=True)
        self.error: BaseException | None = None  # what stopped the pusher (raised on exit)

    def __enter__(self) -> KnativePods:
        self._thread.start()
        if self.pushgateway:
            self._pusher.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._pusher.is_alive():
            self._pusher.join()
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        for pod in self.revisions.values():
            httpx.delete(f"{self.model_server}/mlplat/v1/deployments/{pod.name}", timeout=30)
            if self.pushgateway:
                httpx.delete(self._group(pod), timeout=10)
        if self.error is not None:
            raise AssertionError(f"pushing the queue-proxy metrics failed: {self.error!r}") from self.error

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    async def _close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- pods ---------------------------------------------------------------------------------------

    def resolve(self, storage_uri: str, model_name: str) -> str:
        """
        The storage initializer: the version of ``model_name`` whose artifacts ``storage_uri`` holds.

        :param storage_uri: the predictor's ``storageUri``.
        :param model_name: the registered model to look in (the ``mlplat.io/model-name`` label).
        """
        from mlflow import MlflowClient

        if (message := storage_initializer_error(storage_uri)) is not None:
            raise StorageError(message)
        local = next(
            (prefix + storage_uri[len(bucket):] for bucket, prefix in self.buckets.items()
             if storage_uri.startswith(bucket.rstrip("/") + "/")), None,
        )  # fmt: skip
        client = MlflowClient(tracking_uri=self.mlflow_uri)
        for version in client.search_model_versions(f"name='{model_name}'") if local else []:
            uri = client.get_model_version_download_uri(model_name, version.version)
            if uri.replace(":///", ":/") == local.replace(":///", ":/"):
                return version.version
        raise StorageError(f"Failed to fetch model. No model found in {storage_uri}.")

    def start(self, namespace: str, service: str, revision: str, model_name: str, version: str) -> str:
        """
        Start a revision's pod: load the version as a model server deployment named after the
        revision, put a queue-proxy in front; returns the revision's URL. Raises ``StorageError`` or
        ``RuntimeError`` (the load failed).

        :param namespace: the InferenceService's namespace.
        :param service: the InferenceService's name.
        :param revision: the revision name.
        :param model_name: registered model.
        :param version: its version.
        """
        if revision in self.revisions:
            return self.revisions[revision].url
        model_id = f"{model_name}@{version}"
        load = httpx.post(f"{self.model_server}/v2/repository/models/{model_id}/load", timeout=300)
        if load.status_code != 200:
            raise RuntimeError(f"model {model_id} failed to load: {load.status_code} {load.text[:300]}")
        body = {"model_name": model_name, "stable": version}
        httpx.put(
            f"{self.model_server}/mlplat/v1/deployments/{revision}", json=body, timeout=30
        ).raise_for_status()
        pod = Revision(namespace, service, revision)
        pod.url = self._call(self._serve(self._queue_proxy(pod)))
        self.revisions[revision] = pod
        return pod.url

    def route(self, namespace: str, service: str, traffic: list[tuple[str, int]]) -> str:
        """
        Split the service URL's requests between revisions; returns the service URL.

        :param namespace: the InferenceService's namespace.
        :param service: its name.
        :param traffic: (revision, percent) pairs summing to 100.
        """
        key = (namespace, service)
        self.routes[key] = [(r, p) for r, p in traffic if p > 0]
        if key not in self._route_urls:
            self._route_urls[key] = self._call(self._serve(self._router(key)))
        return self._route_urls[key]

    # -- serving ------------------------------------------------------------------------------------

    async def _serve(self, handler: Any) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        runner = aiohttp.web.ServerRunner(aiohttp.web.Server(handler, access_log=None))
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def _forward(self, request: aiohttp.web.BaseRequest, base: str, path: str) -> aiohttp.web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-request-id")}
        async with self._session.request(request.method, base + path, data=await request.read(),
                                         headers=headers) as answer:  # fmt: skip
            body = await answer.read()
            out = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "x-mlplat-model-version")
            }
            return aiohttp.web.Response(status=answer.status, body=body, headers=out)

    def _queue_proxy(self, pod: Revision):
        """Forward to the revision's deployment (the model name in the path becomes the revision's), count."""

        async def handle(request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
            parts = request.path.split("/")  # /v2/models/<service>/infer or /v1/models/<service>:predict
            if len(parts) < 4 or parts[2] != "models":
                return aiohttp.web.Response(status=404, text=f"no route {request.path}")
            name, _, verb = parts[3].partition(":")
            if name != pod.service:
                return aiohttp.web.Response(
                    status=404, text=f"model {name!r} is not served here ({pod.service})"
                )
            path = "/".join([*parts[:3], pod.name + (f":{verb}" if verb else ""), *parts[4:]])
            started = time.perf_counter()
            answer = await self._forward(request, self.model_server, path)
            pod.observe(answer.status, (time.perf_counter() - started) * 1000)
            return answer

        return handle

    def _router(self, key: tuple[str, str]):
        """Knative's route: every 100 consecutive requests split exactly by percent."""

        async def handle(request: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
            traffic = self.routes[key]
            self._sent[key] += 1
            slot = self._sent[key] % 100
            bounds = itertools.accumulate(percent for _, percent in traffic)
            revision = next(r for (r, _), bound in zip(traffic, bounds, strict=True) if slot < bound)
            return await self._forward(request, self.revisions[revision].url, request.path_qs)

        return handle

    # -- metrics ------------------------------------------------------------------------------------

    def push(self) -> None:
        """Push each revision's queue-proxy metrics to the Pushgateway (a group per revision)."""
        for pod in list(self.revisions.values()):
            httpx.put(self._group(pod), content=pod.exposition(), timeout=10).raise_for_status()

    def _group(self, pod: Revision) -> str:
        return f"{self.pushgateway}/metrics/job/{PUSH_JOB}/namespace_name/{pod.namespace}/revision_name/{pod.name}"

    def _push_loop(self) -> None:
        try:
            while not self._stop.wait(self.push_interval):
                self.push()
        except BaseException as err:  # kept for __exit__: a thread's exception would only be printed
            self.error = err
