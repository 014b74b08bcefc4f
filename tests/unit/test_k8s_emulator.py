"""The Kubernetes emulator, exercised through the real clients: kubernetes, kubernetes_asyncio, Airflow hooks."""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.request

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from airflow_provider_mlplat.testing.kubernetes.emulator import K8sEmulator

RAY = ("ray.io", "v1")
NS = "default"


@pytest.fixture
def emu():
    with K8sEmulator() as emulator:
        emulator.register("ray.io", "v1", "rayjobs", "RayJob")
        emulator.register("ray.io", "v1", "rayclusters", "RayCluster")
        emulator.register("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
        yield emulator
        emulator.check()


@pytest.fixture
def kubeconfig(emu, tmp_path):
    return emu.kubeconfig(tmp_path / "kubeconfig", namespace=NS)


@pytest.fixture
def api_client(kubeconfig):
    api = config.new_client_from_config(config_file=kubeconfig)
    yield api
    api.close()


@pytest.fixture
def crd(api_client):
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def kube_conn(kubeconfig, monkeypatch):
    extra = {"kube_config_path": kubeconfig, "namespace": NS}
    monkeypatch.setenv("AIRFLOW_CONN_KUBE_TEST", json.dumps({"conn_type": "kubernetes", "extra": extra}))
    return "kube_test"


def rayjob(name, spec=None, **meta):
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, **meta},
        "spec": spec or {"entrypoint": "python train.py"},
    }


def create(crd, body, namespace=NS, plural="rayjobs"):
    return crd.create_namespaced_custom_object(*RAY, namespace, plural, body)


def get_json(emu, path):
    with urllib.request.urlopen(emu.url + path, timeout=5) as response:
        return json.load(response)


# -- CRUD ----------------------------------------------------------------------------------------


def test_create_answers_201_with_server_populated_metadata(emu, crd):
    body = rayjob("job-a", labels={"team": "ml"})
    body["status"] = {"jobStatus": "SUCCEEDED"}  # ignored: status is a subresource
    obj, code, _ = crd.create_namespaced_custom_object_with_http_info(*RAY, NS, "rayjobs", body)

    assert code == 201
    meta = obj["metadata"]
    assert meta["name"] == "job-a" and meta["namespace"] == NS and meta["labels"] == {"team": "ml"}
    assert len(meta["uid"]) == 36 and meta["resourceVersion"].isdigit()
    assert meta["generation"] == 1 and meta["creationTimestamp"].endswith("Z")
    assert obj["kind"] == "RayJob" and "status" not in obj
    assert emu.get_object(*RAY, NS, "rayjobs", "job-a") == obj


def test_generate_name_and_duplicate_create(emu, crd):
    a = create(crd, {"metadata": {"generateName": "job-"}, "spec": {}})
    b = create(crd, {"metadata": {"generateName": "job-"}, "spec": {}})
    assert a["metadata"]["name"].startswith("job-") and len(a["metadata"]["name"]) == 9
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["apiVersion"] == "ray.io/v1" and a["kind"] == "RayJob"

    with pytest.raises(ApiException) as exc:
        create(crd, rayjob(a["metadata"]["name"]))
    assert exc.value.status == 409
    status = json.loads(exc.value.body)
    assert status["kind"] == "Status" and status["reason"] == "AlreadyExists"
    assert len(emu.objects("rayjobs")) == 2


def test_get_missing_object_and_unknown_resource_are_404(crd):
    with pytest.raises(ApiException) as exc:
        crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "nope")
    assert exc.value.status == 404 and json.loads(exc.value.body)["reason"] == "NotFound"

    with pytest.raises(ApiException) as exc:
        crd.list_namespaced_custom_object("example.com", "v1", NS, "unregistered")
    assert exc.value.status == 404


def test_get_and_list_with_label_and_field_selectors(crd):
    create(crd, rayjob("a", labels={"app": "a", "tier": "gpu"}))
    create(crd, rayjob("b", labels={"app": "b"}))
    create(crd, rayjob("c", labels={"app": "c"}), namespace="other")

    assert crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "b")["metadata"]["labels"] == {"app": "b"}

    def names(**kwargs):
        return [
            o["metadata"]["name"] for o in crd.list_cluster_custom_object(*RAY, "rayjobs", **kwargs)["items"]
        ]

    listing = crd.list_namespaced_custom_object(*RAY, NS, "rayjobs")
    assert [o["metadata"]["name"] for o in listing["items"]] == ["a", "b"]
    assert listing["kind"] == "RayJobList" and listing["metadata"]["resourceVersion"] == "3"
    assert names() == ["a", "b", "c"]
    assert names(label_selector="app=a") == ["a"]
    assert names(label_selector="app!=a") == ["b", "c"]
    assert names(label_selector="app in (a, c)") == ["a", "c"]
    assert names(label_selector="app notin (a),!tier") == ["b", "c"]
    assert names(label_selector="tier") == ["a"]
    assert names(field_selector="metadata.namespace=other") == ["c"]
    assert names(field_selector="metadata.name=b", label_selector="app==b") == ["b"]


def test_replace_keeps_server_fields_and_detects_stale_writes(crd):
    created = create(crd, rayjob("a"))
    body = {**created, "spec": {"entrypoint": "python v2.py"}, "status": {"jobStatus": "HACKED"}}
    replaced = crd.replace_namespaced_custom_object(*RAY, NS, "rayjobs", "a", body)

    assert replaced["spec"] == {"entrypoint": "python v2.py"}
    assert "status" not in replaced  # status is only written through /status
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["generation"] == 2
    assert int(replaced["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    with pytest.raises(ApiException) as exc:  # the resourceVersion of `created` is stale now
        crd.replace_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {**created, "spec": {}})
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"


def test_merge_patch_bumps_generation_only_on_spec_change(crd):
    created = create(crd, rayjob("a"))
    labelled = crd.patch_namespaced_custom_object(
        *RAY, NS, "rayjobs", "a", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["labels"] == {"x": "y"} and labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    patched = crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"suspend": True}})
    assert patched["spec"] == {"entrypoint": "python train.py", "suspend": True}
    assert patched["metadata"]["generation"] == 2 and patched["metadata"]["labels"] == {"x": "y"}

    removed = crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"suspend": None}})
    assert removed["spec"] == {"entrypoint": "python train.py"} and removed["metadata"]["generation"] == 3

    ops = [{"op": "replace", "path": "/spec/entrypoint", "value": "python json_patch.py"}]
    json_patched = crd.patch_namespaced_custom_object(
        *RAY, NS, "rayjobs", "a", ops, _content_type="application/json-patch+json"
    )
    assert json_patched["spec"]["entrypoint"] == "python json_patch.py"
    assert json_patched["metadata"]["generation"] == 4

    unchanged = crd.patch_namespaced_custom_object(
        *RAY, NS, "rayjobs", "a", {"spec": {"entrypoint": "python json_patch.py"}}
    )
    assert (
        unchanged["metadata"]["resourceVersion"] == json_patched["metadata"]["resourceVersion"]
    )  # no-op write


def test_status_subresource_changes_only_status(emu, crd):
    create(crd, rayjob("a"))
    body = {"status": {"jobStatus": "RUNNING"}, "spec": {"entrypoint": "ignored"}}
    patched = crd.patch_namespaced_custom_object_status(*RAY, NS, "rayjobs", "a", body)
    assert patched["status"] == {"jobStatus": "RUNNING"}
    assert patched["spec"] == {"entrypoint": "python train.py"} and patched["metadata"]["generation"] == 1

    # The main resource ignores status; /status GET and PUT work.
    main = crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"status": {"jobStatus": "HACKED"}})
    assert main["status"] == {"jobStatus": "RUNNING"}
    current = crd.get_namespaced_custom_object_status(*RAY, NS, "rayjobs", "a")
    replaced = crd.replace_namespaced_custom_object_status(
        *RAY, NS, "rayjobs", "a", {**current, "status": {"jobStatus": "SUCCEEDED"}}
    )
    assert replaced["status"] == {"jobStatus": "SUCCEEDED"} and replaced["metadata"]["generation"] == 1
    assert emu.get_object(*RAY, NS, "rayjobs", "a")["status"] == {"jobStatus": "SUCCEEDED"}


def test_delete_and_finalizers(emu, crd):
    create(crd, rayjob("a"))
    status = crd.delete_namespaced_custom_object(*RAY, NS, "rayjobs", "a")
    assert status["kind"] == "Status" and status["status"] == "Success" and status["details"]["name"] == "a"
    assert emu.get_object(*RAY, NS, "rayjobs", "a") is None
    with pytest.raises(ApiException) as exc:
        crd.delete_namespaced_custom_object(*RAY, NS, "rayjobs", "a")
    assert exc.value.status == 404

    create(crd, rayjob("f", finalizers=["ray.io/cleanup"]))
    marked = crd.delete_namespaced_custom_object(*RAY, NS, "rayjobs", "f")
    assert marked["metadata"]["deletionTimestamp"]  # still there until the finalizer goes
    assert crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "f")["metadata"]["deletionTimestamp"]
    crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "f", {"metadata": {"finalizers": None}})
    assert emu.get_object(*RAY, NS, "rayjobs", "f") is None


def test_core_v1_configmaps_and_namespaces(api_client):
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": "team-a"}})
    cm = core.create_namespaced_config_map("team-a", {"metadata": {"name": "cfg"}, "data": {"k": "v"}})
    assert cm.metadata.namespace == "team-a" and cm.metadata.uid
    assert core.read_namespaced_config_map("cfg", "team-a").data == {"k": "v"}
    assert [n.metadata.name for n in core.list_namespace().items] == ["team-a"]
    assert core.read_namespace("team-a").metadata.namespace is None  # cluster-scoped


# -- fault injection and the request log ------------------------------------------------------------


def test_injected_409_answers_before_the_write(emu, crd):
    emu.fail_next(method="POST", plural="rayjobs", status=409)
    with pytest.raises(ApiException) as exc:
        create(crd, rayjob("a"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    assert emu.get_object(*RAY, NS, "rayjobs", "a") is None and emu.objects("rayjobs") == []

    assert create(crd, rayjob("a"))["metadata"]["name"] == "a"  # only the next request failed
    assert emu.count("POST", "rayjobs") == 2


def test_injected_429_with_retry_after_then_success(emu, crd):
    emu.fail_next(method="post", plural="rayjobs", status=429, retry_after=3)
    with pytest.raises(ApiException) as exc:
        create(crd, rayjob("a"))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "3"
    assert emu.objects("rayjobs") == []
    assert create(crd, rayjob("a"))["metadata"]["generation"] == 1
    assert len(emu.objects("rayjobs")) == 1


@pytest.mark.parametrize("code", [403, 500])
def test_injected_errors_repeat_times_and_match_by_name(emu, crd, code):
    create(crd, rayjob("a"))
    create(crd, rayjob("b"))
    emu.fail_next(method="PATCH", plural="rayjobs", name="a", status=code, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"x": 1}})
        assert exc.value.status == code
    assert crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "b", {"spec": {"x": 1}})["spec"]["x"] == 1
    assert emu.get_object(*RAY, NS, "rayjobs", "a")["metadata"]["generation"] == 1  # never written
    assert crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"x": 1}})["spec"]["x"] == 1


def test_request_log(emu, crd):
    create(crd, rayjob("a"))
    crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "a", _request_timeout=5)
    crd.list_namespaced_custom_object(*RAY, NS, "rayjobs", label_selector="x=y")
    post, get, lst = emu.requests[-3:]
    assert (post.method, post.path, post.body["metadata"]["name"]) == (
        "POST",
        f"/apis/ray.io/v1/namespaces/{NS}/rayjobs",
        "a",
    )
    assert (get.method, get.plural, get.name) == ("GET", "rayjobs", "a")
    assert lst.query == {"labelSelector": "x=y"} and lst.name is None
    assert emu.count("GET", "rayjobs") == 2 and emu.count(plural="rayjobs") == 3 and emu.count("DELETE") == 0


# -- watch, controller helpers ----------------------------------------------------------------------


def _watch_in_thread(crd, events, **kwargs):
    w = watch.Watch()

    def run():
        for event in w.stream(
            crd.list_namespaced_custom_object, *RAY, NS, "rayjobs", timeout_seconds=10, **kwargs
        ):
            events.put((event["type"], event["object"]["metadata"]["name"], event["object"].get("status")))
            if event["type"] == "DELETED":
                w.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_watch_streams_added_modified_deleted(emu, crd):
    create(crd, rayjob("a"))
    events: queue.Queue = queue.Queue()
    thread = _watch_in_thread(crd, events)
    assert events.get(timeout=5) == ("ADDED", "a", None)  # the current state first; the watch is live now

    crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"x": 1}})
    emu.set_status(*RAY, NS, "rayjobs", "a", {"jobStatus": "RUNNING"})  # as a fake controller would
    create(crd, rayjob("b"))
    crd.delete_namespaced_custom_object(*RAY, NS, "rayjobs", "a")
    thread.join(timeout=5)

    got = [events.get_nowait() for _ in range(events.qsize())]
    assert got == [
        ("MODIFIED", "a", None),
        ("MODIFIED", "a", {"jobStatus": "RUNNING"}),
        ("ADDED", "b", None),
        ("DELETED", "a", {"jobStatus": "RUNNING"}),
    ]
    assert emu.requests[-1].method == "DELETE"
    assert any(c.query.get("watch") == "True" for c in emu.requests)  # what the python client sends


def test_watch_resumes_from_resource_version_with_selectors(crd):
    rv = create(crd, rayjob("a", labels={"app": "x"}))["metadata"]["resourceVersion"]
    create(crd, rayjob("other", labels={"app": "y"}))
    crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"spec": {"x": 1}})
    crd.delete_namespaced_custom_object(*RAY, NS, "rayjobs", "a")

    events: queue.Queue = queue.Queue()
    _watch_in_thread(crd, events, resource_version=rv, label_selector="app=x").join(timeout=5)
    assert [events.get_nowait() for _ in range(events.qsize())] == [
        ("MODIFIED", "a", None),
        ("DELETED", "a", None),
    ]


def test_raw_watch_true_lowercase_and_timeout(emu, crd):
    create(crd, rayjob("a"))
    started = time.monotonic()
    path = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs?watch=true&timeoutSeconds=1"
    with urllib.request.urlopen(emu.url + path, timeout=5) as response:
        lines = response.read().splitlines()
    assert 0.9 < time.monotonic() - started < 4  # the server ends the stream after timeoutSeconds
    assert [json.loads(line)["type"] for line in lines] == ["ADDED"]


def test_set_status_is_thread_safe_and_observable(emu, crd):
    created = create(crd, rayjob("a"))

    def worker(n):
        for i in range(25):
            emu.set_status(*RAY, NS, "rayjobs", "a", {"worker": n, "step": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    obj = emu.get_object(*RAY, NS, "rayjobs", "a")
    assert int(obj["metadata"]["resourceVersion"]) == int(created["metadata"]["resourceVersion"]) + 100
    assert obj["status"]["step"] == 24 and obj["metadata"]["generation"] == 1
    assert crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "a")["status"] == obj["status"]
    with pytest.raises(KeyError):
        emu.set_status(*RAY, NS, "rayjobs", "missing", {})


# -- discovery and version ----------------------------------------------------------------------------


def test_version_and_discovery(emu, api_client):
    version = client.VersionApi(api_client).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    assert get_json(emu, "/version/")["major"] == "1"

    groups = {
        g.name: g.preferred_version.version for g in client.ApisApi(api_client).get_api_versions().groups
    }
    assert groups["ray.io"] == "v1" and groups["serving.kserve.io"] == "v1beta1"

    ray = {r["name"]: r for r in get_json(emu, "/apis/ray.io/v1")["resources"]}
    assert set(ray) == {"rayjobs", "rayjobs/status", "rayclusters", "rayclusters/status"}
    assert ray["rayjobs"]["kind"] == "RayJob" and ray["rayjobs"]["namespaced"] is True
    assert "watch" in ray["rayjobs"]["verbs"]
    core = {r["name"] for r in get_json(emu, "/api/v1")["resources"]}
    assert {"namespaces", "configmaps", "secrets", "pods"} <= core


# -- Airflow hooks and kubernetes_asyncio -------------------------------------------------------------


def test_kubernetes_hook_custom_object_round_trip(emu, kube_conn):
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    hook = KubernetesHook(conn_id=kube_conn)
    body = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "model"},
        "spec": {"predictor": {"sklearn": {"storageUri": "s3://m"}}},
    }
    created = hook.create_custom_object("serving.kserve.io", "v1beta1", "inferenceservices", body)
    assert created["metadata"]["namespace"] == NS and created["metadata"]["uid"]

    emu.set_status("serving.kserve.io", "v1beta1", NS, "inferenceservices", "model", {"url": "http://model"})
    emu.fail_next("GET", "inferenceservices", status=429, retry_after=0)  # the hook retries per Retry-After
    fetched = hook.get_custom_object("serving.kserve.io", "v1beta1", "inferenceservices", "model")
    assert (
        fetched["status"] == {"url": "http://model"}
        and fetched["metadata"]["uid"] == created["metadata"]["uid"]
    )
    assert emu.count("GET", "inferenceservices") == 2

    deleted = hook.delete_custom_object("serving.kserve.io", "v1beta1", "inferenceservices", "model")
    assert deleted["status"] == "Success"
    assert emu.objects("inferenceservices") == []


@pytest.mark.asyncio
async def test_async_hook_custom_objects_round_trip_and_watch(emu, kube_conn):
    import kubernetes_asyncio
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

    hook = AsyncKubernetesHook(conn_id=kube_conn)
    async with hook.get_conn() as api_client:
        api = kubernetes_asyncio.client.CustomObjectsApi(api_client)
        created = await api.create_namespaced_custom_object(
            *RAY,
            NS,
            "rayclusters",
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayCluster",
                "metadata": {"name": "rc"},
                "spec": {"workers": 1},
            },
        )
        assert created["metadata"]["generation"] == 1
        # kubernetes_asyncio labels a dict body as a JSON patch unless told otherwise; so does the API server.
        with pytest.raises(kubernetes_asyncio.client.ApiException) as exc:
            await api.patch_namespaced_custom_object(*RAY, NS, "rayclusters", "rc", {"spec": {"workers": 2}})
        assert exc.value.status == 400
        patched = await api.patch_namespaced_custom_object(
            *RAY,
            NS,
            "rayclusters",
            "rc",
            {"spec": {"workers": 2}},
            _content_type="application/merge-patch+json",
        )
        assert patched["metadata"]["generation"] == 2
        emu.set_status(*RAY, NS, "rayclusters", "rc", {"state": "ready"})
        fetched = await api.get_namespaced_custom_object(*RAY, NS, "rayclusters", "rc")
        assert fetched["status"] == {"state": "ready"} and fetched["spec"] == {"workers": 2}

        seen = []
        async with kubernetes_asyncio.watch.Watch() as w:
            async for event in w.stream(
                api.list_namespaced_custom_object,
                *RAY,
                NS,
                "rayclusters",
                resource_version=created["metadata"]["resourceVersion"],
                timeout_seconds=5,
            ):
                seen.append((event["type"], event["object"].get("status")))
                if len(seen) == 2:
                    break
        assert seen == [("MODIFIED", None), ("MODIFIED", {"state": "ready"})]

        await api.delete_namespaced_custom_object(*RAY, NS, "rayclusters", "rc")
        with pytest.raises(kubernetes_asyncio.client.ApiException) as exc:
            await api.get_namespaced_custom_object(*RAY, NS, "rayclusters", "rc")
        assert exc.value.status == 404


# -- a long history -------------------------------------------------------------------------------------


def test_a_long_request_history_is_kept_and_the_object_still_served(emu, crd):
    """Its per-request cost as the history grows is measured in bench/bench_k8s.py."""
    create(crd, rayjob("a"))
    for i in range(1000):
        crd.patch_namespaced_custom_object(*RAY, NS, "rayjobs", "a", {"metadata": {"labels": {"i": str(i)}}})
    assert emu.count("PATCH", "rayjobs") == 1000 and len(emu.requests) == 1001
    assert crd.get_namespaced_custom_object(*RAY, NS, "rayjobs", "a")["metadata"]["labels"] == {"i": "999"}


def test_writes_are_checked_against_the_crd_schema_and_webhooks(emu, crd):
    from airflow_provider_mlplat.testing.kubernetes.fixtures import crd_schemas

    emu.register(*RAY, "rayjobs", "RayJob", schema=crd_schemas()[("ray.io/v1", "RayJob")])
    emu.admit(
        *RAY, "rayjobs", "no-suspend", lambda new, old: "suspend" if new["spec"].get("suspend") else None
    )

    def refused(call, *args):
        with pytest.raises(ApiException) as err:
            call(*RAY, NS, "rayjobs", *args)
        return err.value.status, json.loads(err.value.body)

    typo = rayjob("a", {"entrypoint": "python train.py", "entrypont": "x"}, labels={"any": "label"})
    code, status = refused(crd.create_namespaced_custom_object, typo)
    assert (code, status["reason"], status["message"]) == (
        400, "BadRequest", 'strict decoding error: unknown field "spec.entrypont"'
    )  # fmt: skip
    low = rayjob("a", {"entrypoint": "python train.py", "preRunningDeadlineSeconds": 0})
    code, status = refused(crd.create_namespaced_custom_object, low)
    assert (code, status["reason"], status["details"]["causes"]) == (422, "Invalid", [{
        "reason": "FieldValueInvalid", "field": "spec.preRunningDeadlineSeconds",
        "message": "Invalid value: 0: spec.preRunningDeadlineSeconds in body should be greater than or equal to 1",
    }])  # fmt: skip
    assert status["message"].startswith(
        'RayJob.ray.io "a" is invalid: spec.preRunningDeadlineSeconds: Invalid value'
    )
    assert emu.objects("rayjobs") == []

    created = create(crd, rayjob("a", labels={"any": "label"}))
    bad_patches = [
        (crd.patch_namespaced_custom_object, {"spec": {"shutdownAfterJobFinishez": True}}, 400),
        (crd.patch_namespaced_custom_object, {"spec": {"entrypoint": 3}}, 422),
        (crd.patch_namespaced_custom_object_status, {"status": {"jobStatuz": "RUNNING"}}, 400),
        (crd.patch_namespaced_custom_object, {"spec": {"suspend": True}}, 422),  # the webhook
    ]
    assert [refused(call, "a", body)[0] for call, body, _ in bad_patches] == [
        code for *_, code in bad_patches
    ]
    assert refused(crd.patch_namespaced_custom_object, "a", {"spec": {"suspend": True}})[1]["message"] == (
        'admission webhook "no-suspend" denied the request: suspend'
    )
    assert emu.get_object(*RAY, NS, "rayjobs", "a") == created  # nothing half-applied
    status = crd.patch_namespaced_custom_object_status(
        *RAY, NS, "rayjobs", "a", {"status": {"jobStatus": "RUNNING"}}
    )
    assert status["status"] == {"jobStatus": "RUNNING"}  # declared fields pass (the webhook skips /status)


def test_an_emulator_failure_answers_500_and_fails_the_check(emu, crd):
    emu._list = lambda *args: 1 / 0  # an emulator bug
    with pytest.raises(ApiException) as err:
        crd.list_namespaced_custom_object(*RAY, NS, "rayjobs")
    assert err.value.status == 500
    with pytest.raises(
        AssertionError, match=r"failed 1 request\(s\): \[ZeroDivisionError\('division by zero'\)\]"
    ):
        emu.check()
    emu.server_errors.clear()  # checked: the fixture's own check passes
