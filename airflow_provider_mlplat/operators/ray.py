"""Run a Ray job on a Ray cluster or as a KubeRay RayJob: deferrable, retry-safe, result to XCom."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatError
from airflow_provider_mlplat.hooks.ray import RayHook, RayJobState
from airflow_provider_mlplat.hooks.ray_target import ray_job_hook
from airflow_provider_mlplat.links.ray import RayJobLink
from airflow_provider_mlplat.ray_results import result_path, save_result, saved_result
from airflow_provider_mlplat.triggers.ray import RayJobTrigger, wait_for_job

if TYPE_CHECKING:
    from airflow.sdk import Context

#: A job returns its result by printing one line: this marker, then the result as JSON.
RESULT_MARKER = "MLPLAT_RESULT_JSON="
#: XCom key of the job summary (id, target, status, dashboard).
JOB_XCOM_KEY = "ray_job"


def job_key(context: Context) -> str:
    """
    The deterministic job id of a task instance, from dag_id, run_id, task_id and map_index: a
    valid RayJob name (DNS-1035, at most 41 characters, so retries can add ``-r<n>``).

    :param context: the task's Airflow context.
    """
    ti = context["ti"]
    identity = "\0".join((ti.dag_id, ti.run_id, ti.task_id, str(ti.map_index)))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", ti.task_id.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"job-{slug}"
    return f"{slug[:30].rstrip('-')}-{digest}"


def attempt_job_id(base: str, attempt: int) -> str:
    """
    The job id of the n-th job a task instance submits (a new one only after one failed).

    :param base: :func:`job_key` of the task instance.
    :param attempt: 1 for the first job.
    """
    return base if attempt == 1 else f"{base}-r{attempt}"


def parse_result(lines: Sequence[str]) -> dict[str, Any] | None:
    """
    The result a job printed (the last :data:`RESULT_MARKER` line), or None.

    :param lines: the job's log lines.
    """
    for line in reversed(lines):
        if line.startswith(RESULT_MARKER):
            text = line[len(RESULT_MARKER) :]
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise MLPlatError(
                    f"the job's {RESULT_MARKER} line is not JSON ({err}): {text[:200]!r}"
                ) from None
    return None


class RayJobOperator(BaseOperator):
    """
    Runs an entrypoint as a Ray job where the ``ray`` connection says: on a Ray cluster through the
    Job Submission API, or - when the connection has a ``kubernetes_conn_id`` extra - as a KubeRay
    ``RayJob`` resource whose cluster comes from ``cluster_spec`` / ``cluster_spec_file`` or from
    ``image``, ``head_resources``, ``worker_resources``, ``worker_replicas``.

    The job id derives from dag_id, run_id, task_id and map_index: a retry or a restarted worker
    reattaches to the running job; a job that succeeded is not rerun; after a failed or stopped job,
    the next try submits ``<id>-r2``, ``-r3``, ... Deferrable by default (:class:`RayJobTrigger`);
    otherwise the job's log is streamed into the task log. A failed job fails the task with Ray's
    error and the last log lines. The job returns a result by printing one line
    ``MLPLAT_RESULT_JSON=<json>``: that JSON is the task's return value (None without such a line). It
    is also kept in artifact storage (``ray/results/<job id>.json``, with the job's start time), so a
    retry after success returns it even once the cluster is gone; a succeeded job whose result can
    be read from neither fails the task, saying why.
    XCom ``ray_job`` holds the job id, target, status and dashboard address.

    :param entrypoint: shell command the job runs, e.g. ``python train.py``.
    :param working_dir: folder the job runs in: a local absolute path (uploaded by Ray; zipped into
        artifact storage for KubeRay) or a remote URI.
    :param pip: pip requirements installed for the job (``runtime_env["pip"]``).
    :param env_vars: environment of the job; non-string values are passed as JSON.
    :param runtime_env: any other Ray runtime env settings (the three above win over it).
    :param job_metadata: metadata attached to the job (the Airflow ids are added).
    :param entrypoint_num_cpus: CPUs reserved for the entrypoint process.
    :param ray_conn_id: ``ray`` connection: where the job runs.
    :param mlflow_conn_id: when set, the job gets ``MLFLOW_TRACKING_URI`` in its runtime env and the
        connection's credentials out of the dashboard's sight: on a Ray cluster from a 0600 file its
        entrypoint sources (under a local artifact root), on KubeRay from the Secret named by the
        ``ray`` connection's ``env_secret`` extra (checked before the RayJob is created).
    :param cluster_spec: KubeRay ``rayClusterSpec`` as a dict.
    :param cluster_spec_file: a YAML file holding a ``rayClusterSpec`` (rendered with Jinja first).
    :param image: KubeRay container image of the generated cluster.
    :param head_resources: KubeRay head requests = limits, e.g. ``{"cpu": "2", "memory": "4Gi"}``.
    :param worker_resources: KubeRay requests = limits of each worker.
    :param worker_replicas: KubeRay worker count of the generated cluster (default 1).
    :param shutdown_after_job_finishes: KubeRay deletes the cluster when the job ends.
    :param ttl_seconds_after_finished: seconds KubeRay keeps the cluster after the job (the operator
        reads the job's log meanwhile).
    :param active_deadline_seconds: KubeRay fails the job after this many seconds.
    :param backoff_limit: KubeRay retries of a failed job, each on a new cluster.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param poll_interval: seconds between status reads.
    :param startup_timeout: seconds a job may stay pending (e.g. KubeRay Initializing) before the
        task fails with the reason and the job is stopped.
    :param log_tail_lines: log lines shown at the end and in a failure.
    """

    template_fields: Sequence[str] = (
        "entrypoint",
        "working_dir",
        "pip",
        "env_vars",
        "runtime_env",
        "job_metadata",
        "cluster_spec",
        "cluster_spec_file",
        "image",
    )
    template_fields_renderers = {"env_vars": "json", "runtime_env": "json", "cluster_spec": "json"}
    operator_extra_links = (RayJobLink(),)
    ui_color = "#e6f4ff"

    def __init__(
        self,
        *,
        entrypoint: str,
        working_dir: str | None = None,
        pip: list[str] | str | dict[str, Any] | None = None,
        env_vars: dict[str, Any] | None = None,
        runtime_env: dict[str, Any] | None = None,
        job_metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        ray_conn_id: str = RayHook.default_conn_name,
        mlflow_conn_id: str | None = None,
        cluster_spec: dict[str, Any] | None = None,
        cluster_spec_file: str | None = None,
        image: str | None = None,
        head_resources: dict[str, str] | None = None,
        worker_resources: dict[str, str] | None = None,
        worker_replicas: int | None = None,
        shutdown_after_job_finishes: bool = True,
        ttl_seconds_after_finished: int = 600,
        active_deadline_seconds: int | None = None,
        backoff_limit: int = 0,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        startup_timeout: float = 900.0,
        log_tail_lines: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.working_dir = working_dir
        self.pip = pip
        self.env_vars = env_vars
        self.runtime_env = runtime_env
        self.job_metadata = job_metadata
        self.entrypoint_num_cpus = entrypoint_num_cpus
        self.ray_conn_id = ray_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.cluster_spec = cluster_spec
        self.cluster_spec_file = cluster_spec_file
        self.image = image
        self.head_resources = head_resources
        self.worker_resources = worker_resources
        self.worker_replicas = worker_replicas
        self.shutdown_after_job_finishes = shutdown_after_job_finishes
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.active_deadline_seconds = active_deadline_seconds
        self.backoff_limit = backoff_limit
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.startup_timeout = startup_timeout
        self.log_tail_lines = log_tail_lines
        self._hook: RayHook | None = None
        self._job_id: str | None = None

    # -- validation ---------------------------------------------------------------------------

    def _validate(self) -> None:
        """Check every parameter before anything is submitted or written."""

        def bad(name: str, value: Any, valid: str) -> MLPlatConfigError:
            return MLPlatConfigError(f"{self.task_id}: {name}={value!r} is invalid: {valid}")

        if not isinstance(self.entrypoint, str) or not self.entrypoint.strip():
            raise bad("entrypoint", self.entrypoint, "give the shell command the job runs")
        for name in ("env_vars", "runtime_env", "job_metadata", "cluster_spec"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise bad(name, value, "expected a dict")
        if self.working_dir is not None:
            local = "://" not in str(self.working_dir)
            if local and not (Path(self.working_dir).is_absolute() and Path(self.working_dir).is_dir()):
                raise bad("working_dir", self.working_dir, "expected an existing absolute folder or a URI")
        if self.pip is not None and not isinstance(self.pip, (str, list, Mapping)):
            raise bad("pip", self.pip, "expected a list of requirements, a requirements file or a dict")
        optional = ("entrypoint_num_cpus", "worker_replicas", "active_deadline_seconds")
        for name, low in {
            "poll_interval": "> 0",
            "startup_timeout": "> 0",
            "active_deadline_seconds": "> 0",
            "log_tail_lines": ">= 0",
            "entrypoint_num_cpus": ">= 0",
            "worker_replicas": ">= 0",
            "ttl_seconds_after_finished": ">= 0",
            "backoff_limit": ">= 0",
        }.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or value < 0 or (value == 0 and low == "> 0"):
                raise bad(name, value, f"expected a number {low}")
        generated = {
            "image": self.image,
            "head_resources": self.head_resources,
            "worker_resources": self.worker_resources,
            "worker_replicas": self.worker_replicas,
        }
        given = [name for name, value in generated.items() if value is not None]
        if self.cluster_spec is not None and self.cluster_spec_file:
            raise bad(
                "cluster_spec_file",
                self.cluster_spec_file,
                "give cluster_spec or cluster_spec_file, not both",
            )
        if (self.cluster_spec is not None or self.cluster_spec_file) and given:
            raise bad(
                given[0], generated[given[0]], "a cluster_spec / cluster_spec_file is used as is; drop it"
            )
        if self.cluster_spec_file and not Path(self.cluster_spec_file).is_file():
            raise bad("cluster_spec_file", self.cluster_spec_file, "no such file")
        if self.cluster_spec is not None and "headGroupSpec" not in self.cluster_spec:
            raise bad("cluster_spec", self.cluster_spec, "a rayClusterSpec needs a headGroupSpec")

    # -- what is submitted --------------------------------------------------------------------

    def _runtime_env(self, job_id: str) -> dict[str, Any]:
        env = dict(self.runtime_env or {})
        if self.working_dir:
            env["working_dir"] = str(self.working_dir)
        if self.pip:
            env["pip"] = self.pip
        env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
        for key, value in (self.env_vars or {}).items():
            env_vars[str(key)] = value if isinstance(value, str) else json.dumps(value, default=str)
        if self.mlflow_conn_id:
            env_vars.update(_mlflow_env(self.mlflow_conn_id)[0])
        env_vars["MLPLAT_RAY_JOB_ID"] = job_id
        env["env_vars"] = env_vars
        return env

    def _cluster_options(self, context: Context) -> dict[str, Any]:
        """The KubeRay-only arguments of the RayJob (the cluster, lifecycle, retries)."""
        from airflow_provider_mlplat.hooks.kuberay import cluster_spec

        if self.cluster_spec_file:
            import yaml

            text = self.render_template(Path(self.cluster_spec_file).read_text(), context)
            cluster = yaml.safe_load(text)
            if not isinstance(cluster, dict) or "headGroupSpec" not in cluster:
                raise MLPlatConfigError(
                    f"{self.task_id}: {self.cluster_spec_file} must hold a rayClusterSpec (with a headGroupSpec)"
                )
        elif self.cluster_spec is not None:
            cluster = dict(self.cluster_spec)
        else:
            cluster = cluster_spec(
                self.image,
                self.head_resources,
                self.worker_resources,
                1 if self.worker_replicas is None else self.worker_replicas,
            )
        return {
            "cluster": cluster,
            "shutdown_after_job_finishes": self.shutdown_after_job_finishes,
            "ttl_seconds_after_finished": self.ttl_seconds_after_finished,
            "active_deadline_seconds": self.active_deadline_seconds,
            "backoff_limit": self.backoff_limit,
        }

    def _submit(self, context: Context, hook: RayHook) -> RayJobState:
        """Submit the task instance's job, or reattach to it; a failed job is followed by a new one."""
        ti = context["ti"]
        metadata = {
            "airflow_dag_id": ti.dag_id,
            "airflow_run_id": ti.run_id,
            "airflow_task_id": ti.task_id,
            "airflow_map_index": str(ti.map_index),
            **{str(k): str(v) for k, v in (self.job_metadata or {}).items()},
        }
        options = self._cluster_options(context) if hook.target == "kuberay" else {}
        secrets = _mlflow_env(self.mlflow_conn_id)[1] if self.mlflow_conn_id else {}
        base = job_key(context)
        for attempt in itertools.count(1):
            job_id = attempt_job_id(base, attempt)
            state, created = hook.submit_job(
                job_id,
                entrypoint=hook.prepare_secret_env(job_id, secrets, self.entrypoint),
                runtime_env=self._runtime_env(job_id),
                metadata=metadata,
                entrypoint_num_cpus=self.entrypoint_num_cpus,
                **options,
            )
            if created:
                self.log.info("submitted %s job %s", hook.target, job_id)
                return state
            if state.status not in ("FAILED", "STOPPED"):
                self.log.info("reattached to %s job %s: %s", hook.target, job_id, state.describe(False))
                return state
            self.log.info(
                "%s job %s of an earlier try ended %s: submitting a new job",
                hook.target,
                job_id,
                state.status,
            )
        raise AssertionError("unreachable")

    def _record(self, context: Context, hook: RayHook, state: RayJobState) -> None:
        """Keep the job summary and the dashboard link in XCom."""
        summary = {
            "job_id": state.job_id,
            "target": hook.target,
            "status": state.status,
            "dashboard_url": state.dashboard_url,
        }
        if hook.target == "kuberay":
            summary["namespace"] = hook.namespace  # type: ignore[attr-defined]
        context["ti"].xcom_push(key=JOB_XCOM_KEY, value=summary)
        if state.dashboard_url:
            RayJobLink().persist(context, state.dashboard_url, state.job_id)

    # -- execution ----------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        """Submit (or reattach to) the job, then defer or wait here; return the job's result."""
        self._validate()
        hook = ray_job_hook(self.ray_conn_id)
        state = self._submit(context, hook)
        self._hook, self._job_id = hook, state.job_id
        self._record(context, hook, state)
        if state.terminal:  # it succeeded in an earlier try: not rerun
            return self._finish(
                context, hook, {"event": "finished", "job_id": state.job_id, "state": state.to_dict()}
            )
        if self.deferrable:
            self.defer(
                trigger=RayJobTrigger(
                    state.job_id, self.ray_conn_id, self.poll_interval, self.startup_timeout
                ),
                method_name="execute_complete",
            )
        event, streamed = asyncio.run(self._follow(hook, state.job_id))
        return self._finish(context, hook, event, streamed)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any] | None:
        """
        Resume after the trigger fired: fetch the log tail, fail on a failed job, return the result.

        :param context: the task's Airflow context.
        :param event: the trigger's event payload.
        """
        hook = ray_job_hook(self.ray_conn_id)
        self._hook, self._job_id = hook, event["job_id"]
        return self._finish(context, hook, event)

    async def _follow(self, hook: RayHook, job_id: str) -> tuple[dict[str, Any], int | None]:
        """
        Wait for the job in this process, streaming its log once the dashboard holds it; return the
        event and how many log lines were streamed (None: not streamed).
        """
        tail: asyncio.Task[None] | None = None
        streamed: list[str] = []

        def on_state(state: RayJobState) -> None:
            nonlocal tail
            if tail is None and state.dashboard_url and state.status != "PENDING":
                tail = asyncio.create_task(self._stream(hook, state, streamed))

        event = await wait_for_job(hook, job_id, self.poll_interval, self.startup_timeout, on_state)
        if tail is None:
            return event, None
        # Ray closes a finished job's log stream seconds later: the rest comes with the whole log
        tail.cancel()
        await asyncio.gather(tail, return_exceptions=True)
        return event, len(streamed)

    async def _stream(self, hook: RayHook, state: RayJobState, sink: list[str]) -> None:
        try:
            async for line in hook.tail_logs(state):
                sink.append(line)
                self.log.info("%s", line)
        except Exception as err:  # the whole log is read at the end: what the stream missed is logged then
            self.log.warning("could not follow the log of job %s: %s", state.job_id, err)

    def _finish(
        self, context: Context, hook: RayHook, event: dict[str, Any], streamed: int | None = None
    ) -> dict[str, Any] | None:
        job_id, kind = event["job_id"], event["event"]
        state = RayJobState(**event["state"]) if event.get("state") else None
        if kind in ("finished", "startup_timeout"):  # ended, or stopped below: it reads no secret any more
            hook.discard_secret_env(job_id)
        if state is not None:
            self._record(context, hook, state)
        if kind == "startup_timeout" and state is not None:
            hook.stop_job(job_id)
            raise MLPlatError(
                f"{hook.target} job {job_id} did not start: {event['message']}; {state.describe()}. "
                "Asked to stop it."
            )
        if kind != "finished" or state is None:
            raise MLPlatError(f"waiting for {hook.target} job {job_id} failed: {event['message']}")
        logs, unreadable = self._logs(hook, state)
        lines = logs.splitlines() if logs is not None else []
        tail = lines[-self.log_tail_lines :] if self.log_tail_lines else []
        if streamed is not None:
            for line in lines[streamed:]:  # what the stream had not delivered yet
                self.log.info("%s", line)
        elif tail:
            self.log.info("last %d line(s) of the log of job %s:\n%s", len(tail), job_id, "\n".join(tail))
        if state.status != "SUCCEEDED":
            shown = f"\n--- last {len(tail)} log line(s) ---\n" + "\n".join(tail) if tail else ""
            # with the log at hand, Ray's message (which repeats the log) is cut to its first line
            raise MLPlatError(
                f"{hook.target} job {job_id} {state.describe(full_message=logs is None)}{shown}"
            )
        return self._result(hook, state, lines if logs is not None else None, unreadable)

    def _result(
        self, hook: RayHook, state: RayJobState, lines: list[str] | None, unreadable: str
    ) -> dict[str, Any] | None:
        """The result of a succeeded job: from its log (then saved), else as saved when it succeeded."""
        if lines is not None:
            result = parse_result(lines)
            uri = save_result(state, result)
            if result is None:
                self.log.warning("job %s printed no %s line: it returns nothing", state.job_id, RESULT_MARKER)
            else:
                self.log.info("result of job %s saved at %s", state.job_id, uri)
            return result
        found, result = saved_result(state)
        if found:
            self.log.info("result of job %s read from %s", state.job_id, result_path(state.job_id))
            return result
        raise MLPlatError(
            f"{hook.target} job {state.job_id} SUCCEEDED but its result cannot be read: {unreadable}, and no "
            f"result of this run of the job was saved at {result_path(state.job_id)} (no task read its log "
            "before the cluster went away). Raise ttl_seconds_after_finished, or clear the task to run it again."
        )

    def _logs(self, hook: RayHook, state: RayJobState) -> tuple[str | None, str]:
        """The job's whole log, or None and why when no dashboard holding it can be reached."""
        if not state.dashboard_url:
            why = "no Ray dashboard is known for it"
            self.log.warning("job %s: %s, its log cannot be read", state.job_id, why)
            return None, why
        try:
            return hook.job_logs(state), ""
        except Exception as err:
            why = f"its log could not be read from {state.dashboard_url} ({err})"
            self.log.warning("job %s: %s", state.job_id, why)
            return None, why

    def on_kill(self) -> None:
        """Stop the Ray job (KubeRay: delete the RayJob) this task started or reattached to."""
        if self._hook is not None and self._job_id is not None:
            self.log.info("stopping %s job %s", self._hook.target, self._job_id)
            self._hook.stop_job(self._job_id)


def _mlflow_env(mlflow_conn_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """
    MLflow settings for a job's environment from an ``mlflow`` connection: the plain ones (tracking
    and registry URI) and the credentials, which the target hands over out of sight.
    """
    from airflow_provider_mlplat.hooks.mlflow import MLflowHook

    hook = MLflowHook(mlflow_conn_id)
    env = {"MLFLOW_TRACKING_URI": hook.tracking_uri}
    if hook.registry_uri != hook.tracking_uri:
        env["MLFLOW_REGISTRY_URI"] = hook.registry_uri
    credentials = {}
    with hook.credentials():  # the hook decides which variables carry the credentials
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            if os.environ.get(name):
                credentials[name] = os.environ[name]
    return env, credentials
