"""A small Kubernetes API server emulator for tests, built on kmock.

``K8sEmulator`` takes from kmock's ``KubernetesScaffold`` the API discovery (``/api``, ``/apis``,
``/apis/<group>/<version>``), ``/version``, the bundled list of builtin resources and the error
rendering. It replaces kmock's request routing (which re-scans the whole request history on every
request and stores writes even when an error is injected) with a flat dispatcher over an in-memory
object store with Kubernetes semantics.

It serves on 127.0.0.1 from a background thread with its own event loop, so synchronous test code
and the synchronous ``kubernetes`` client can call it::

    with K8sEmulator() as emu:
        emu.register("ray.io", "v1", "rayjobs", "RayJob", schema=openapi_v3_schema)
        emu.kubeconfig(tmp_path / "kubeconfig")

Writes of a resource registered with its CRD's ``openAPIV3Schema`` are checked like the API server's
structural schema with strict field validation: an unknown field answers 400 (``strict decoding
error``), a value the schema refuses 422 naming the field. ``admit`` adds validating webhooks.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import json
import re
import secrets
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple, Self

import aiohttp.web
import jsonpatch  # a dependency of kmock
import jsonschema
import kmock
from aiohttp.test_utils import RawTestServer

Res = tuple[str, str, str]  # (group, version, plural); the core group is ""
Key = tuple[str | None, str]  # (namespace, name); namespace is None for cluster-scoped objects
#: a validating webhook: (new object, stored object or None) -> None, or the reason it denies the write
Webhook = Callable[[dict, dict | None], str | None]
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
FIXED_META = {"name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"}
_TERM = re.compile(  # one label/field selector requirement
    r"(?P<neg>!)?\s*(?P<key>[\w./-]+)"
    r"(?:\s*(?P<op>==|!=|=)\s*(?P<val>[\w./-]*)|\s+(?P<set>in|notin)\s*\((?P<vals>[^)]*)\))?"
)


class Call(NamedTuple):
    """One recorded request."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    namespace: str | None = None
    plural: str | None = None
    name: str | None = None
    subresource: str | None = None


class Access(NamedTuple):
    """One request as RBAC authorizes it (``group`` is "" for the core group and non-resource URLs)."""

    user: str
    verb: str
    group: str
    resource: str  # plural[/subresource], or the path of a non-resource URL
    namespace: str | None
    name: str | None


@dataclasses.dataclass
class _Fault:
    method: str | None
    plural: str | None
    name: str | None
    status: int
    times: int | None
    retry_after: int | None
    reason: str
    message: str

    def matches(self, call: Call) -> bool:
        return (
            self.method in (None, call.method)
            and self.plural in (None, call.plural)
            and self.name in (None, call.name)
        )


def _reason(code: int) -> str:
    return {422: "Invalid", 500: "InternalError"}.get(code) or HTTPStatus(code).phrase.replace(" ", "")


def _fail(code: int, message: str, reason: str | None = None) -> kmock.KubernetesError:
    return kmock.KubernetesError(code, reason or _reason(code), message)


def _status(code: int, reason: str, message: str = "", details: Any = None, headers: Any = None) -> Any:
    status = "Success" if code < 400 else "Failure"
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": status, "code": code}
    body |= {"reason": reason, "message": message, "details": details or {}}
    return aiohttp.web.json_response(body, status=code, headers=headers)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and shares the untouched subtrees."""
    if not isinstance(patch, dict):
        return patch
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _field_path(parts: Any) -> str:
    """``spec.canary[0].trafficPercent`` from a JSON path (keys and list indexes)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_fields(value: Any, schema: dict, path: tuple = ()) -> list[str]:
    """Fields of ``value`` a structural schema does not declare (what pruning would drop)."""
    if isinstance(value, list) and "items" in schema:
        return [f for i, item in enumerate(value) for f in _unknown_fields(item, schema["items"], (*path, i))]
    if not isinstance(value, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        extra = extra if isinstance(extra, dict) else {}
        return [f for k, v in value.items() for f in _unknown_fields(v, extra, (*path, k))]
    props = schema.get("properties")
    if props is None:
        return []
    return [
        f
        for key, item in value.items()
        for f in (
            _unknown_fields(item, props[key], (*path, key)) if key in props else [_field_path((*path, key))]
        )
        if path or key != "metadata"  # ObjectMeta is validated by the API server itself, not the CRD
    ]


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
               type(None): "null"}  # fmt: skip
_SCHEMA_MESSAGES = {
    "maximum": lambda e: f"should be less than or equal to {e.validator_value}",
    "minimum": lambda e: f"should be greater than or equal to {e.validator_value}",
    "type": lambda e: f"must be of type {e.validator_value}: {json.dumps(_JSON_TYPES[type(e.instance)])}",
    "enum": lambda e: f"should be one of {json.dumps(e.validator_value)}",
}


def _schema_errors(obj: dict, validator: jsonschema.protocols.Validator) -> list[dict[str, str]]:
    """The API server's causes for the values a CRD schema refuses, one per field."""
    causes = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        field = _field_path(error.absolute_path)
        explain = _SCHEMA_MESSAGES.get(error.validator)
        message = f"{field} in body {explain(error)}" if explain else error.message
        causes.append({"reason": "FieldValueInvalid", "field": field,
                       "message": f"Invalid value: {json.dumps(error.instance)}: {message}"})  # fmt: skip
    return causes


def _parse_path(path: str) -> tuple[str, str, str | None, str | None, str | None, str | None] | None:
    """Split a resource URL into (group, version, namespace, plural, name, subresource)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural, name, subresource = (rest + [None] * 3)[:3]
    return group, version, namespace, plural, name, subresource


def _api_version(res: Res) -> str:
    return f"{res[0]}/{res[1]}" if res[0] else res[1]


def _namespace(obj: dict) -> str | None:
    return obj["metadata"].get("namespace")


def _ordered(objs: dict[Key, dict]) -> list[tuple[Key, dict]]:
    return sorted(objs.items(), key=lambda item: (item[0][0] or "", item[0][1]))


def _field(obj: Any, path: str) -> str | None:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj if obj is None or isinstance(obj, str) else json.dumps(obj)


def _label(obj: dict, key: str) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(key)


def _requirement(term: re.Match, have: str | None) -> bool:
    if term["op"]:
        return (have != term["val"]) if term["op"] == "!=" else (have == term["val"])
    if term["set"]:
        return (have in {v.strip() for v in term["vals"].split(",")}) == (term["set"] == "in")
    return (have is None) == bool(term["neg"])


def _selector(expr: str | None, get: Callable[[dict, str], str | None]) -> Callable[[dict], bool]:
    """Compile a label/field selector (=, ==, !=, in, notin, key, !key) into a predicate."""
    terms = []
    for text in filter(None, (t.strip() for t in re.split(r",(?![^(]*\))", expr or ""))):
        if not (term := _TERM.fullmatch(text)):
            raise _fail(400, f"unable to parse selector requirement: {text!r}")
        terms.append(term)
    return lambda obj: all(_requirement(term, get(obj, term["key"])) for term in terms)


class K8sEmulator(kmock.KubernetesScaffold):
    """An in-memory Kubernetes API server on 127.0.0.1 for the official clients."""

    def __init__(self) -> None:
        super().__init__()
        with warnings.catch_warnings():  # kmock 0.8 calls the deprecated importlib.resources.read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()  # builtins: v1 pods, configmaps, namespaces..., apps/v1, batch/v1
        self.requests: list[Call] = []
        self.audit: list[Access] = []  # what each request asked, as RBAC sees it (see _audit)
        self.server_errors: list[Exception] = []  # unexpected exceptions in the emulator itself
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._faults: list[_Fault] = []
        self._schemas: dict[Res, tuple[dict, jsonschema.protocols.Validator]] = {}
        self._webhooks: dict[Res, list[tuple[str, Webhook]]] = {}
        self._store: dict[Res, dict[Key, dict]] = {}  # stored dicts are replaced, never mutated
        self._events: list[tuple[int, Res, dict]] = []  # (resourceVersion, resource, event)
        self._watchers: list[tuple[Res, str | None, Callable[[dict], bool], asyncio.Queue[dict | None]]] = []
        self._rv = 0
        self._mutex = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: RawTestServer | None = None

    def __repr__(self) -> str:
        return f"<K8sEmulator {self.url if self._server else 'stopped'}>"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 from a background thread with its own event loop."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-emulator", daemon=True)
        self._thread.start()
        self._server = RawTestServer(self, host="127.0.0.1")
        asyncio.run_coroutine_threadsafe(self._server.start_server(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """End all watches, stop the server and its thread."""
        if self._loop is None or self._thread is None or self._server is None:
            return
        with self._mutex:
            for *_, queue in self._watchers:
                self._loop.call_soon_threadsafe(queue.put_nowait, None)
        asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:  # type: ignore[override]
        assert self._server is not None, "the emulator is not started"
        return f"http://127.0.0.1:{self._server.port}"

    def kubeconfig(self, path: str | Path, namespace: str = "default", token: str = "emulator-token") -> str:
        """Write a kubeconfig file (JSON, which is valid YAML) pointing at this emulator, as ``token``."""
        context = {"cluster": "emulator", "user": "emulator", "namespace": namespace}
        config: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "current-context": "emulator"}
        config["clusters"] = [{"name": "emulator", "cluster": {"server": self.url}}]
        config["users"] = [{"name": "emulator", "user": {"token": token}}]
        config["contexts"] = [{"name": "emulator", "context": context}]
        Path(path).write_text(json.dumps(config, indent=2))
        return str(path)

    # -- test-side helpers (thread-safe) --------------------------------------------------------

    def register(self, group: str, version: str, plural: str, kind: str, namespaced: bool = True,
                 subresources: tuple[str, ...] = ("status",), schema: dict | None = None) -> None:  # fmt: skip
        """Declare a custom resource, served and discoverable; writes are checked against ``schema``
        (its CRD's ``openAPIV3Schema``) when given."""
        info = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS)
        info.subresources = set(subresources)
        self.resources[kmock.resource(group, version, plural)] = info
        if schema is not None:
            self._schemas[(group, version, plural)] = (schema, jsonschema.Draft7Validator(schema))

    def admit(self, group: str, version: str, plural: str, name: str, webhook: Webhook) -> None:
        """Add a validating webhook ``name`` for writes of a resource: a reason it returns answers 422."""
        with self._mutex:
            self._webhooks.setdefault((group, version, plural), []).append((name, webhook))

    def fail_next(self, method: str | None = None, plural: str | None = None, status: int = 500,
                  times: int | None = 1, retry_after: int | None = None, name: str | None = None,
                  reason: str | None = None, message: str | None = None) -> None:  # fmt: skip
        """Answer the next ``times`` matching requests (None: all) with ``status``, before any write."""
        method = method.upper() if method else None
        reason = reason or ("AlreadyExists" if (status, method) == (409, "POST") else _reason(status))
        fault = _Fault(method, plural, name, status, times, retry_after, reason, message or "injected")
        with self._mutex:
            self._faults.append(fault)

    def count(self, method: str | None = None, plural: str | None = None) -> int:
        """How many requests came with this method and/or for this plural."""
        method = method.upper() if method else None
        with self._mutex:
            counts = list(self._counts.items())
        return sum(n for (m, p), n in counts if method in (None, m) and plural in (None, p))

    def get_object(self, group: str, version: str, namespace: str | None, plural: str,
                   name: str) -> dict | None:  # fmt: skip
        """A copy of a stored object, or None."""
        with self._mutex:
            return copy.deepcopy(self._store.get((group, version, plural), {}).get((namespace, name)))

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Copies of the stored objects of this plural (any group/version), optionally of one namespace."""
        with self._mutex:
            found = [
                obj for res, objs in self._store.items() if res[2] == plural for _, obj in _ordered(objs)
            ]
            return [copy.deepcopy(obj) for obj in found if namespace in (None, _namespace(obj))]

    def set_status(self, group: str, version: str, namespace: str | None, plural: str, name: str,
                   status: dict) -> dict:  # fmt: skip
        """Replace an object's status as a controller would: bumps resourceVersion, emits MODIFIED."""
        res = (group, version, plural)
        with self._mutex:
            old = self._store.get(res, {}).get((namespace, name))
            if old is None:
                raise KeyError(f"{plural}.{group} {namespace}/{name} does not exist")
            return copy.deepcopy(self._update(res, self._info(res), old, {"status": status}, "status"))

    def create_object(self, group: str, version: str, plural: str, body: dict) -> dict:
        """Store a new object as an administrator would (no request: neither logged nor audited)."""
        res = (group, version, plural)
        with self._mutex:
            return copy.deepcopy(self._create(res, self._info(res), body["metadata"].get("namespace"), body))

    # -- RBAC audit -----------------------------------------------------------------------------

    def _audit(self, raw: aiohttp.web.BaseRequest, call: Call, where: tuple | None) -> None:
        """Record who asked what, in RBAC's terms (verb, API group, resource[/subresource], namespace)."""
        user = raw.headers.get("Authorization", "").removeprefix("Bearer ")
        if where is None or call.plural is None:  # discovery: a non-resource URL
            self.audit.append(Access(user, call.method.lower(), "", raw.path, None, None))
            return
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(call.method)
        if call.method == "GET":
            watch = call.query.get("watch", "").lower() in ("true", "1")
            verb = "watch" if watch else ("get" if call.name else "list")
        elif call.method == "DELETE":
            verb = "delete" if call.name else "deletecollection"
        resource = f"{call.plural}/{call.subresource}" if call.subresource else call.plural
        self.audit.append(
            Access(user, verb or call.method.lower(), where[0], resource, call.namespace, call.name)
        )

    def check(self) -> None:
        """Fail when the emulator itself failed: clients would take its 500s for transient outages."""
        with self._mutex:
            errors = list(self.server_errors)
        assert not errors, f"the Kubernetes emulator failed {len(errors)} request(s): {errors!r}"

    # -- serving ----------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one request in O(1): injected faults first, then discovery or the object store."""
        body = await raw.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        where = _parse_path(raw.path)
        call = Call(raw.method, raw.path, dict(raw.query), data, *(where[2:] if where else ()))
        with self._mutex:
            self.requests.append(call)
            self._audit(raw, call, where)
            self._counts[call.method, call.plural] += 1
            fault = next((fault for fault in self._faults if fault.matches(call)), None)
            if fault and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return _status(fault.status, fault.reason, fault.message, headers=headers)
        try:
            if where is None or call.plural is None:
                return aiohttp.web.json_response(await self._discover(raw.path))
            return await self._serve(raw, call, (where[0], where[1], call.plural))
        except kmock.KubernetesError as e:
            return _status(e.status, e.reason or _reason(e.status), e.message or "", e.details)
        except Exception as e:  # an emulator bug: answer a Status with the traceback and keep it
            self.server_errors.append(e)
            return await self._render_error(e)

    async def _discover(self, path: str) -> Any:
        """Serve /, /version, /api, /apis and group/version discovery with kmock's handlers."""
        parts = path.strip("/").split("/")
        fixed = {"": self._serve_root, "api": self._serve_api, "apis": self._serve_apis}
        fixed["version"] = self._serve_server_version
        if len(parts) == 1 and parts[0] in fixed:
            return await fixed[parts[0]](kmock.Request())
        if len(parts) == 2 and parts[0] == "apis":
            return await self._serve_group(kmock.Request(resource=kmock.resource(group=parts[1])))
        if len(parts) in (2, 3) and parts[0] in ("api", "apis"):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            resource = kmock.resource(group=group, version=version)
            return await self._serve_version(kmock.Request(resource=resource))
        raise _fail(404, "the server could not find the requested resource")

    def _info(self, res: Res) -> kmock.ResourceInfo:
        key = kmock.resource(group=res[0], version=res[1], plural=res[2])
        if key not in self.resources:
            raise _fail(404, "the server could not find the requested resource")
        return self.resources[key]

    async def _serve(self, raw: aiohttp.web.BaseRequest, call: Call, res: Res) -> aiohttp.web.StreamResponse:
        info = self._info(res)
        ns = call.namespace if info.namespaced else None
        method, name, sub, body = call.method, call.name, call.subresource, call.body
        if sub is not None and (sub != "status" or sub not in info.subresources):
            raise _fail(404, f"subresource {sub!r} is not served")
        if method == "GET" and call.query.get("watch", "").lower() in ("true", "1"):
            return await self._watch(raw, call, res, ns)
        code = 200
        with self._mutex:
            old = self._store.get(res, {}).get((ns, name or ""))
            if name is None and method == "GET":
                result = self._list(res, info, ns, call.query)
            elif name is None and method == "POST":
                result, code = self._create(res, info, ns, body), 201
            elif name is None or method not in ("GET", "PUT", "PATCH", "DELETE"):
                raise _fail(405, f"{method} is not supported here")
            elif old is None:
                raise _fail(404, f'{res[2]}.{res[0]} "{name}" not found')
            elif method == "GET":
                result = old
            elif method == "PUT":
                result = self._update(res, info, old, body, sub)
            elif method == "PATCH":
                try:
                    json_patch = "json-patch" in raw.content_type  # else a merge patch
                    patched = jsonpatch.apply_patch(old, body) if json_patch else _merge(old, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    bad_request = isinstance(e, jsonpatch.InvalidJsonPatch)  # not a list of operations
                    raise _fail(400 if bad_request else 422, f"JSON patch: {e}") from None
                result = self._update(res, info, old, patched, sub)
            else:
                result = self._delete(res, old)
        return aiohttp.web.json_response(result, status=code)

    def _list(self, res: Res, info: kmock.ResourceInfo, ns: str | None, query: dict[str, str]) -> dict:
        match = self._matcher(query, None)
        items = [
            obj for (ons, _), obj in _ordered(self._store.get(res, {})) if ns in (None, ons) and match(obj)
        ]
        head = {"apiVersion": _api_version(res), "kind": f"{info.kind}List"}
        return head | {"metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _create(self, res: Res, info: kmock.ResourceInfo, ns: str | None, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _fail(400, "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        objs = self._store.setdefault(res, {})
        namespace = (ns or meta.get("namespace") or "default") if info.namespaced else None
        while not meta.get("name") and meta.get("generateName"):
            name = meta["generateName"] + secrets.token_hex(3)[:5]
            meta["name"] = None if (namespace, name) in objs else name
        if not meta.get("name"):
            raise _fail(422, "name or generateName is required")
        if (namespace, meta["name"]) in objs:
            raise _fail(409, f'{res[2]}.{res[0]} "{meta["name"]}" already exists', "AlreadyExists")
        meta.pop("namespace", None)
        meta.pop("deletionTimestamp", None)
        meta |= {"namespace": namespace} if namespace else {}
        meta |= {"uid": str(uuid.uuid4()), "creationTimestamp": _now(), "generation": 1}
        obj.setdefault("apiVersion", _api_version(res))
        obj.setdefault("kind", info.kind)
        if "status" in info.subresources:
            obj.pop("status", None)  # as in Kubernetes: only the /status subresource writes status
        self._validate(res, obj, None)
        return self._commit(res, obj, "ADDED")

    def _update(self, res: Res, info: kmock.ResourceInfo, old: dict, new: Any, sub: str | None) -> dict:
        """Replace ``old`` by ``new`` as Kubernetes does: status split, generation, optimistic locking."""
        if not isinstance(new, dict):
            raise _fail(400, "the request body must be a JSON object")
        new, old_meta = copy.deepcopy(new), old["metadata"]
        if (new.get("metadata") or {}).get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise _fail(409, "the object has been modified; please apply your changes to the latest version")
        status_split = "status" in info.subresources
        if sub == "status":  # the /status subresource changes the status only
            obj = {**old, "metadata": dict(old_meta), "status": new.get("status")}
        else:  # the main resource keeps the server-owned metadata and, if split, the status
            meta = {k: v for k, v in (new.get("metadata") or {}).items() if k not in FIXED_META}
            obj = {**new, "metadata": meta | {k: v for k, v in old_meta.items() if k in FIXED_META}}
            obj |= {"status": old.get("status")} if status_split else {}
            ignored = {"metadata", "apiVersion", "kind"} | ({"status"} if status_split else set())
            spec = lambda o: {k: v for k, v in o.items() if k not in ignored}  # noqa: E731
            if spec(obj) != spec(old):
                obj["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if obj.get("status") is None:
            obj.pop("status", None)
        obj["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if obj == old:
            return old  # a no-op write changes nothing and emits nothing, as in Kubernetes
        self._validate(res, obj, old, sub)
        gone = obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers")
        return self._commit(res, obj, "DELETED" if gone else "MODIFIED")

    def _delete(self, res: Res, old: dict) -> dict:
        meta = old["metadata"]
        if meta.get("deletionTimestamp"):
            return old
        if meta.get("finalizers"):  # only marked: it goes when the finalizers are removed
            return self._commit(res, {**old, "metadata": {**meta, "deletionTimestamp": _now()}}, "MODIFIED")
        self._commit(res, {**old, "metadata": dict(meta)}, "DELETED")
        details = {"name": meta["name"], "group": res[0], "kind": res[2], "uid": meta.get("uid")}
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "details": details}

    def _validate(self, res: Res, obj: dict, old: dict | None, sub: str | None = None) -> None:
        """Refuse a write as the API server would: unknown fields (400), schema (422), then the webhooks
        (422; not for the status subresource)."""
        kind, name = f"{obj.get('kind')}.{res[0]}", obj["metadata"].get("name")
        if res in self._schemas:
            schema, validator = self._schemas[res]
            if unknown := _unknown_fields(obj, schema):
                raise _fail(400, "strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in unknown),
                            "BadRequest")  # fmt: skip
            if causes := _schema_errors(obj, validator):
                message = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
                raise kmock.KubernetesError(422, "Invalid", f'{kind} "{name}" is invalid: {message}',
                                            {"name": name, "group": res[0], "kind": obj.get("kind"), "causes": causes})  # fmt: skip
        for webhook, check in self._webhooks.get(res, []) if sub is None else []:
            if (denied := check(copy.deepcopy(obj), copy.deepcopy(old))) is not None:
                raise _fail(422, f'admission webhook "{webhook}" denied the request: {denied}')

    def _commit(self, res: Res, obj: dict, kind: str) -> dict:
        """Store a new object version under a new resourceVersion and notify the watchers."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = (_namespace(obj), obj["metadata"]["name"])
        if kind == "DELETED":
            self._store[res].pop(key, None)
        else:
            self._store.setdefault(res, {})[key] = obj
        event = {"type": kind, "object": obj}
        self._events.append((self._rv, res, event))
        for wres, wns, match, queue in self._watchers:
            if wres == res and wns in (None, key[0]) and match(obj) and self._loop is not None:
                self._loop.call_soon_threadsafe(queue.put_nowait, event)
        return obj

    def _matcher(self, query: dict[str, str], name: str | None) -> Callable[[dict], bool]:
        labels = _selector(query.get("labelSelector"), _label)
        fields = _selector(query.get("fieldSelector"), _field)
        return lambda obj: name in (None, obj["metadata"]["name"]) and labels(obj) and fields(obj)

    async def _watch(self, raw: aiohttp.web.BaseRequest, call: Call, res: Res, ns: str | None) -> Any:
        """Stream events as JSON lines: from ``resourceVersion`` on, or the current state as ADDED."""
        match, queue = self._matcher(call.query, call.name), asyncio.Queue[dict | None]()
        since = call.query.get("resourceVersion", "")
        with self._mutex:
            if since.isdigit() and since != "0":
                start = bisect.bisect_right(self._events, int(since), key=lambda e: e[0])
                backlog = [event for _, r, event in self._events[start:] if r == res]
            else:
                backlog = [{"type": "ADDED", "object": obj} for _, obj in _ordered(self._store.get(res, {}))]
            backlog = [e for e in backlog if ns in (None, _namespace(e["object"])) and match(e["object"])]
            watcher = (res, ns, match, queue)
            self._watchers.append(watcher)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        timeout = float(call.query["timeoutSeconds"]) if call.query.get("timeoutSeconds") else None
        try:
            async with asyncio.timeout(timeout):
                for event in backlog:
                    await response.write(json.dumps(event).encode() + b"\n")
                while (live := await queue.get()) is not None:  # None: the emulator stops
                    await response.write(json.dumps(live).encode() + b"\n")
        except (TimeoutError, ConnectionError):
            pass  # the client's timeoutSeconds passed, or the client went away
        finally:
            with self._mutex:
                self._watchers.remove(watcher)
        return response
