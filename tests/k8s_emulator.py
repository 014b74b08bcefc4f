"""A small Kubernetes API server emulator for tests, built on kmock.

``K8sEmulator`` reuses kmock's ``KubernetesScaffold`` for request parsing, API discovery
(``/api``, ``/apis``, ``/apis/<group>/<version>``), ``/version`` and the bundled list of
builtin resources, but replaces kmock's request routing (which re-scans the whole request
history on every request) with a flat dispatcher over an in-memory object store.

It serves on 127.0.0.1 from a background thread with its own event loop, so synchronous
test code and the synchronous ``kubernetes`` client can call it::

    with K8sEmulator() as emu:
        emu.register('ray.io', 'v1', 'rayjobs', 'RayJob')
        emu.kubeconfig(tmp_path / 'kubeconfig')
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import json
import random
import re
import string
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Self

import aiohttp.web
import jsonpatch  # a dependency of kmock
import kmock
from aiohttp.test_utils import RawTestServer

Res = tuple[str, str, str]  # (group, version, plural); the core group is ''
VERBS = {'create', 'delete', 'get', 'list', 'patch', 'update', 'watch'}
FIXED_META = {'name', 'namespace', 'uid', 'creationTimestamp', 'generation', 'deletionTimestamp'}
REASONS = {400: 'BadRequest', 403: 'Forbidden', 404: 'NotFound', 405: 'MethodNotAllowed',
           409: 'Conflict', 422: 'Invalid', 429: 'TooManyRequests', 500: 'InternalError',
           503: 'ServiceUnavailable'}
_TERM = re.compile(r'(?P<neg>!)?\s*(?P<key>[\w./-]+)(?:\s*(?P<op>==|!=|=)\s*(?P<val>[\w./-]*)'
                   r'|\s+(?P<set>in|notin)\s*\((?P<vals>[^)]*)\))?')


class Call(NamedTuple):
    """One recorded request."""
    method: str
    path: str
    query: dict[str, str]
    body: Any
    plural: str | None
    name: str | None
    subresource: str | None


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


def _fail(code: int, message: str, reason: str | None = None) -> kmock.KubernetesError:
    return kmock.KubernetesError(code, reason or REASONS.get(code, 'Unknown'), message)


def _status(code: int, reason: str, message: str, details: Any = None, headers: Any = None) -> aiohttp.web.Response:
    body = {'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'code': code, 'reason': reason,
            'status': 'Success' if code < 400 else 'Failure', 'message': message, 'details': details or {}}
    return aiohttp.web.json_response(body, status=code, headers=headers)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value, shares untouched subtrees)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _ordered(objs: dict[tuple[str | None, str], dict]) -> list[tuple[tuple[str | None, str], dict]]:
    return sorted(objs.items(), key=lambda item: (item[0][0] or '', item[0][1]))


def _field(obj: dict, path: str) -> str | None:
    for part in path.split('.'):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj if obj is None or isinstance(obj, str) else json.dumps(obj)


def _label(obj: dict, key: str) -> str | None:
    return (obj['metadata'].get('labels') or {}).get(key)


def _selector(expr: str | None, get: Callable[[dict, str], str | None]) -> Callable[[dict], bool]:
    """Compile a label/field selector (=, ==, !=, in, notin, key, !key) into a predicate."""
    terms = []
    for term in filter(None, (t.strip() for t in re.split(r',(?![^(]*\))', expr or ''))):
        if not (m := _TERM.fullmatch(term)):
            raise _fail(400, f'unable to parse selector requirement: {term!r}')
        terms.append((m['neg'], m['key'], m['op'], m['val'], m['set'],
                      {v.strip() for v in (m['vals'] or '').split(',')}))

    def check(obj: dict) -> bool:
        for neg, key, op, val, setop, vals in terms:
            have = get(obj, key)
            ok = (have == val if op in ('=', '==') else have != val if op == '!=' else
                  have in vals if setop == 'in' else have not in vals if setop == 'notin' else
                  (have is None) == bool(neg))
            if not ok:
                return False
        return True
    return check


class K8sEmulator(kmock.KubernetesScaffold):
    """An in-memory Kubernetes API server on 127.0.0.1 for the official clients."""

    def __init__(self) -> None:
        super().__init__()
        self.resources.load_bundled()  # builtin resources: v1 pods/configmaps/secrets/..., apps/v1, batch/v1
        self.requests: list[Call] = []
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._faults: list[_Fault] = []
        self._store: dict[Res, dict[tuple[str | None, str], dict]] = {}
        self._events: list[tuple[int, Res, dict]] = []  # (resourceVersion, resource, event)
        self._watchers: list[tuple[Res, str | None, Callable[[dict], bool], asyncio.Queue]] = []
        self._rv = 0
        self._mutex = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: RawTestServer | None = None

    def __repr__(self) -> str:
        return f'<K8sEmulator {self.url if self._server else "stopped"}>'

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 from a background thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name='k8s-emulator', daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """End all watches, stop the server and its thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._astop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._server = None

    async def _astart(self) -> None:
        await self.__aenter__()  # kmock renders unexpected errors as Status objects while entered
        self._server = RawTestServer(self, host='127.0.0.1')
        await self._server.start_server()

    async def _astop(self) -> None:
        with self._mutex:
            for *_, queue in self._watchers:
                queue.put_nowait(None)
        assert self._server is not None
        await self._server.close()
        await self.__aexit__(None, None, None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:  # type: ignore[override]
        assert self._server is not None, 'the emulator is not started'
        return f'http://127.0.0.1:{self._server.port}'

    def kubeconfig(self, path: str | Path, namespace: str = 'default') -> str:
        """Write a kubeconfig file (JSON is valid YAML) pointing at this emulator."""
        names = {'cluster': 'emulator', 'user': 'emulator', 'namespace': namespace}
        config = {'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'emulator',
                  'clusters': [{'name': 'emulator', 'cluster': {'server': self.url}}],
                  'users': [{'name': 'emulator', 'user': {'token': 'emulator-token'}}],
                  'contexts': [{'name': 'emulator', 'context': names}]}
        Path(path).write_text(json.dumps(config, indent=2))
        return str(path)

    # -- test-side helpers (thread-safe) --------------------------------------------------------

    def register(self, group: str, version: str, plural: str, kind: str,
                 namespaced: bool = True, subresources: tuple[str, ...] = ('status',)) -> None:
        """Declare a custom resource (served and discoverable)."""
        self.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS, subresources=set(subresources))

    def fail_next(self, method: str | None = None, plural: str | None = None, status: int = 500,
                  times: int | None = 1, retry_after: int | None = None, name: str | None = None,
                  reason: str | None = None, message: str | None = None) -> None:
        """Answer the next ``times`` matching requests (None: all) with ``status``, before any write."""
        method = method.upper() if method else None
        reason = reason or ('AlreadyExists' if status == 409 and method == 'POST' else REASONS.get(status, 'Unknown'))
        with self._mutex:
            self._faults.append(_Fault(method, plural, name, status, times, retry_after,
                                       reason, message or f'injected failure {status}'))

    def count(self, method: str | None = None, plural: str | None = None) -> int:
        """How many requests came with this method and/or for this plural."""
        with self._mutex:
            return sum(n for (m, p), n in self._counts.items()
                       if method in (None, m) and (plural is None or plural == p))

    def get_object(self, group: str, version: str, namespace: str | None, plural: str, name: str) -> dict | None:
        """A copy of a stored object, or None."""
        with self._mutex:
            return copy.deepcopy(self._store.get((group, version, plural), {}).get((namespace, name)))

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Copies of all stored objects of this plural (any group/version), optionally in a namespace."""
        with self._mutex:
            return [copy.deepcopy(obj) for (_, _, p), objs in self._store.items() if p == plural
                    for (ns, _), obj in _ordered(objs) if namespace in (None, ns)]

    def set_status(self, group: str, version: str, namespace: str | None, plural: str, name: str,
                   status: dict) -> dict:
        """Replace an object's status as a controller would: bumps resourceVersion, emits MODIFIED."""
        res = (group, version, plural)
        with self._mutex:
            old = self._store.get(res, {}).get((namespace, name))
            if old is None:
                raise KeyError(f'{plural}.{group} {namespace}/{name} does not exist')
            return copy.deepcopy(self._update(res, self._info(res), old, {'status': status}, 'status'))

    # -- serving ----------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Route one request in O(1): injected faults first, then discovery or the object store."""
        res = request.resource
        call = Call(request.method.value, request.url.path, dict(request.params), request.data,
                    res.plural if res else None, request.name, request.subresource)
        with self._mutex:
            self.requests.append(call)
            self._counts[call.method, call.plural] += 1
            fault = next((f for f in self._faults if f.method in (None, call.method)
                          and f.plural in (None, call.plural) and f.name in (None, call.name)), None)
            if fault and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault:
            headers = {'Retry-After': str(fault.retry_after)} if fault.retry_after is not None else None
            return _status(fault.status, fault.reason, fault.message, headers=headers)
        try:
            if call.plural is None:
                return aiohttp.web.json_response(await self._discover(request))
            return await self._serve(request, call)
        except kmock.KubernetesError as e:
            return _status(e.status, e.reason or REASONS.get(e.status, 'Unknown'), e.message or '', e.details)

    async def _discover(self, request: kmock.Request) -> Any:
        if request.resource is None:
            paths = {'/': self._serve_root, '/api': self._serve_api, '/apis': self._serve_apis,
                     '/version': self._serve_server_version}
            handler = paths.get(request.url.path.rstrip('/') or '/')
        else:
            handler = self._serve_group if request.resource.version is None else self._serve_version
        if handler is None:
            raise _fail(404, 'the server could not find the requested resource')
        return await handler(request)

    def _info(self, res: Res) -> kmock.ResourceInfo:
        key = kmock.resource(*res)
        if key not in self.resources:
            raise _fail(404, 'the server could not find the requested resource')
        return self.resources[key]

    async def _serve(self, request: kmock.Request, call: Call) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request.resource.version is not None
        res: Res = (request.resource.group or '', request.resource.version, call.plural or '')
        info = self._info(res)
        ns = request.namespace if info.namespaced else None
        method, name, sub, query = call.method, call.name, call.subresource, call.query
        if sub is not None and (sub != 'status' or sub not in info.subresources):
            raise _fail(404, f'subresource {sub!r} is not served')
        if method == 'GET' and query.get('watch', '').lower() in ('true', '1'):
            return await self._watch(request, res, ns)
        code = 200
        with self._mutex:
            old = self._store.get(res, {}).get((ns, name or ''))
            if name is None and method == 'GET':
                result = self._list(res, info, ns, query)
            elif name is None and method == 'POST':
                result, code = self._create(res, info, ns, call.body), 201
            elif name is None or method not in ('GET', 'PUT', 'PATCH', 'DELETE'):
                raise _fail(405, f'{method} is not supported here')
            elif old is None:
                raise _fail(404, f'{res[2]}.{res[0]} "{name}" not found')
            elif method == 'GET':
                result = old
            elif method == 'PUT':
                result = self._update(res, info, old, call.body, sub)
            elif method == 'PATCH':
                kind = next((v for k, v in request.headers.items() if k.lower() == 'content-type'), '')
                try:
                    patched = jsonpatch.apply_patch(old, call.body) if 'json-patch' in kind else _merge(old, call.body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    raise _fail(422, f'invalid JSON patch: {e}') from None
                result = self._update(res, info, old, patched, sub)
            else:
                result = self._delete(res, old)
        return aiohttp.web.json_response(result, status=code)

    def _list(self, res: Res, info: kmock.ResourceInfo, ns: str | None, query: dict[str, str]) -> dict:
        match = self._matcher(query, None)
        items = [obj for (ons, _), obj in _ordered(self._store.get(res, {})) if ns in (None, ons) and match(obj)]
        return {'apiVersion': f'{res[0]}/{res[1]}'.lstrip('/'), 'kind': f'{info.kind}List',
                'metadata': {'resourceVersion': str(self._rv)}, 'items': items}

    def _create(self, res: Res, info: kmock.ResourceInfo, ns: str | None, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _fail(400, 'the request body must be a JSON object')
        obj = copy.deepcopy(body)
        meta = obj.setdefault('metadata', {})
        objs = self._store.setdefault(res, {})
        meta['namespace'] = (ns or meta.get('namespace') or 'default') if info.namespaced else None
        while not meta.get('name') and meta.get('generateName'):
            name = meta['generateName'] + ''.join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta['name'] = None if (meta['namespace'], name) in objs else name
        if not meta.get('name'):
            raise _fail(422, 'name or generateName is required')
        if (meta['namespace'], meta['name']) in objs:
            raise _fail(409, f'{res[2]}.{res[0]} "{meta["name"]}" already exists', 'AlreadyExists')
        if not info.namespaced:
            del meta['namespace']
        obj.setdefault('apiVersion', f'{res[0]}/{res[1]}'.lstrip('/'))
        obj.setdefault('kind', info.kind)
        if 'status' in info.subresources:
            obj.pop('status', None)  # as in Kubernetes: the main resource ignores status
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop('deletionTimestamp', None)
        return self._commit(res, obj, 'ADDED')

    def _update(self, res: Res, info: kmock.ResourceInfo, old: dict, new: Any, sub: str | None) -> dict:
        """Replace ``old`` with ``new`` by Kubernetes rules (status split, generation, optimistic locking)."""
        if not isinstance(new, dict):
            raise _fail(400, 'the request body must be a JSON object')
        new, old_meta = copy.deepcopy(new), old['metadata']
        rv = (new.get('metadata') or {}).get('resourceVersion')
        if rv and rv != old_meta['resourceVersion']:
            raise _fail(409, 'the object has been modified; please apply your changes to the latest version')
        if sub == 'status':
            obj = {**old, 'metadata': dict(old_meta), 'status': new.get('status')}
        else:
            meta = {k: v for k, v in (new.get('metadata') or {}).items() if k not in FIXED_META}
            obj = {**new, 'metadata': meta | {k: v for k, v in old_meta.items() if k in FIXED_META}}
            ignored = {'metadata', 'apiVersion', 'kind'} | ({'status'} if 'status' in info.subresources else set())
            if 'status' in info.subresources:
                obj.pop('status', None)
                obj.update({'status': old['status']} if 'status' in old else {})
            if {k: v for k, v in obj.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
                obj['metadata']['generation'] = old_meta.get('generation', 1) + 1
        if obj.get('status') is None:
            obj.pop('status', None)
        obj['metadata']['resourceVersion'] = old_meta['resourceVersion']
        if obj == old:
            return old  # a no-op write changes nothing, as in Kubernetes
        gone = obj['metadata'].get('deletionTimestamp') and not obj['metadata'].get('finalizers')
        return self._commit(res, obj, 'DELETED' if gone else 'MODIFIED')

    def _delete(self, res: Res, old: dict) -> dict:
        meta = old['metadata']
        if meta.get('finalizers'):  # mark for deletion; it goes when the finalizers are removed
            return old if meta.get('deletionTimestamp') else self._commit(
                res, {**old, 'metadata': {**meta, 'deletionTimestamp': _now()}}, 'MODIFIED')
        self._commit(res, {**old, 'metadata': dict(meta)}, 'DELETED')
        return {'apiVersion': 'v1', 'kind': 'Status', 'metadata': {}, 'status': 'Success',
                'details': {'name': meta['name'], 'group': res[0], 'kind': res[2], 'uid': meta.get('uid')}}

    def _commit(self, res: Res, obj: dict, kind: str) -> dict:
        """Store a new object version (never mutated afterwards) and notify the watchers."""
        self._rv += 1
        obj['metadata']['resourceVersion'] = str(self._rv)
        key = (obj['metadata'].get('namespace'), obj['metadata']['name'])
        if kind == 'DELETED':
            self._store[res].pop(key, None)
        else:
            self._store.setdefault(res, {})[key] = obj
        event = {'type': kind, 'object': obj}
        self._events.append((self._rv, res, event))
        for wres, wns, match, queue in self._watchers:
            if wres == res and wns in (None, key[0]) and match(obj):
                assert self._loop is not None
                self._loop.call_soon_threadsafe(queue.put_nowait, event)
        return obj

    def _matcher(self, query: dict[str, str], name: str | None) -> Callable[[dict], bool]:
        labels, fields = _selector(query.get('labelSelector'), _label), _selector(query.get('fieldSelector'), _field)
        return lambda obj: name in (None, obj['metadata']['name']) and labels(obj) and fields(obj)

    async def _watch(self, request: kmock.Request, res: Res, ns: str | None) -> aiohttp.web.StreamResponse:
        """Stream events as JSON lines: from ``resourceVersion`` on, or the current state as ADDED."""
        query = request.params
        match, queue = self._matcher(query, request.name), asyncio.Queue()
        since = query.get('resourceVersion', '')
        with self._mutex:
            if since.isdigit() and since != '0':
                start = bisect.bisect_right(self._events, int(since), key=lambda e: e[0])
                backlog = [e for _, r, e in self._events[start:] if r == res
                           and ns in (None, e['object']['metadata'].get('namespace')) and match(e['object'])]
            else:
                backlog = [{'type': 'ADDED', 'object': obj} for (ons, _), obj in _ordered(self._store.get(res, {}))
                           if ns in (None, ons) and match(obj)]
            watcher = (res, ns, match, queue)
            self._watchers.append(watcher)
        response = aiohttp.web.StreamResponse(headers={'Content-Type': 'application/json'})
        await response.prepare(request._raw_request)
        timeout = float(query['timeoutSeconds']) if query.get('timeoutSeconds') else None
        try:
            async with asyncio.timeout(timeout):
                for event in backlog:
                    await response.write(json.dumps(event).encode() + b'\n')
                while (event := await queue.get()) is not None:
                    await response.write(json.dumps(event).encode() + b'\n')
        except (TimeoutError, ConnectionError):
            pass
        finally:
            with self._mutex:
                self._watchers.remove(watcher)
        return response
