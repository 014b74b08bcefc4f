"""MLflow tracking and registry hook."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_mlplat.exceptions import (
    MLPlatConfigError,
    MLPlatServiceUnavailable,
    MLPlatValidationFailed,
)
from airflow_provider_mlplat.hooks.base import MLPlatHook, scoped_env

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.utils.rest_utils import MlflowHostCreds

#: version tag naming the run that holds a version's evaluation metrics (set by MLflowEvaluateOperator)
EVALUATION_RUN_TAG = "mlplat.evaluation_run_id"
#: tags a training job sets on its model version: the training set, its content hash, what it was split from
TRAINING_SET_TAG = "mlplat.training_set.uri"
TRAINING_SET_HASH_TAG = "mlplat.training_set.content_hash"
TRAINING_SOURCE_TAG = "mlplat.training_set.source_uri"
#: the last drift check of the traffic a version served (JSON: share, verdict, drifted features, report)
DRIFT_TAG = "mlplat.drift.last"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


class MLflowHook(MLPlatHook):
    """
    Talks to an MLflow tracking server and model registry.

    The connection's host is the tracking URI; login + password give basic auth, a password alone
    is a bearer token. The client from :meth:`get_conn` sends the credentials with each request and
    never puts them in the process environment; MLflow's fluent API and artifact transfers only read
    credentials from the environment, so those run inside :meth:`fluent` / :meth:`credentials`.

    :param mlflow_conn_id: Airflow connection id of type ``mlflow``.
    """

    conn_name_attr = "mlflow_conn_id"
    conn_type = "mlflow"
    default_conn_name = "mlflow_default"
    hook_name = "MLflow"
    required_extras = ("mlflow",)

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=mlflow_conn_id)

    @classmethod
    async def for_trigger(cls, mlflow_conn_id: str) -> MLflowHook:
        """
        A hook whose connection was fetched without blocking the event loop (for triggers).

        :param mlflow_conn_id: Airflow connection id of type ``mlflow``.
        """
        hook = cls(mlflow_conn_id)
        hook.connection = hook.checked(await cls.aget_connection(mlflow_conn_id))
        return hook

    @property
    def tracking_uri(self) -> str:
        """The tracking URI from the connection's host."""
        host = self.connection.host or ""
        if not host:
            raise ValueError(
                f"connection {self.conn_id!r} has no host: set the tracking URI, e.g. http://127.0.0.1:5000"
            )
        return host.rstrip("/")

    @property
    def registry_uri(self) -> str:
        """The registry URI (defaults to the tracking URI)."""
        return self.extra("registry_uri") or self.tracking_uri

    @contextmanager
    def credentials(self) -> Iterator[None]:
        """Expose the connection's credentials to MLflow's REST client for one block only."""
        login, password = self.connection.login, self.connection.password
        yield_env: dict[str, str | None] = {
            "MLFLOW_TRACKING_USERNAME": login if login and password else None,
            "MLFLOW_TRACKING_PASSWORD": password if login and password else None,
            "MLFLOW_TRACKING_TOKEN": password if password and not login else None,
        }
        with scoped_env(yield_env):
            yield

    @contextmanager
    def fluent(self) -> Iterator[None]:
        """
        Point MLflow's fluent API (``mlflow.start_run``, ``mlflow.evaluate``, model loading) at this
        connection for one block, credentials included; the previous settings come back afterwards.
        """
        import mlflow.tracking.fluent as fluent_state
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        registry = scoped_env({"MLFLOW_REGISTRY_URI": self.registry_uri, "MLFLOW_EXPERIMENT_ID": None})
        # an experiment set earlier in this process (mlflow.set_experiment) belongs to another server
        # and would make start_run(run_id=...) refuse a run of this one
        active_experiment = fluent_state._active_experiment_id
        fluent_state._active_experiment_id = None
        try:
            with self.credentials(), registry, _use_tracking_uri(self.tracking_uri):
                yield
        finally:
            fluent_state._active_experiment_id = active_experiment

    def _host_creds(self, uri: str) -> MlflowHostCreds:
        from mlflow.utils.rest_utils import MlflowHostCreds

        login, password = self.connection.login, self.connection.password
        if login and password:
            return MlflowHostCreds(uri, username=login, password=password)
        return MlflowHostCreds(uri, token=password or None)

    @cached_property
    def client(self) -> MlflowClient:
        """
        The MLflow client for this connection (cached); over HTTP its tracking and registry stores
        take the credentials per request from the connection.
        """
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        if self.tracking_uri.startswith(("http://", "https://")):
            login, password = self.connection.login, self.connection.password
            self.ensure_reachable(  # with the credentials, as every request of the client
                f"{self.tracking_uri}/health",
                "MLflow",
                auth=(login, password) if login and password else None,
                headers={"Authorization": f"Bearer {password}"} if password and not login else None,
            )
            _per_request_credentials(client, self._host_creds)
        return client

    def get_conn(self) -> MlflowClient:
        """Return the cached :class:`mlflow.MlflowClient`."""
        return self.client

    def probe(self) -> str:
        """List one experiment: proves the server answers and accepts the credentials."""
        # a connection test answers at once: no retries with backoff (the default waits minutes)
        fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
        with scoped_env(fail_fast):
            experiments = self.client.search_experiments(max_results=1)
        return f"MLflow at {self.tracking_uri} answered ({len(experiments)} experiment(s) listed)"

    # -- registry lookups with errors that say what exists ----------------------------------------

    def registered_model(self, name: str) -> RegisteredModel:
        """
        A registered model with its aliases; a clear error when it does not exist.

        :param name: registered model name.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code in _NOT_FOUND:
                raise MLPlatConfigError(
                    f"registered model {name!r} not found in the MLflow registry at {self.registry_uri}"
                ) from None
            raise

    def model_version(self, name: str, ref: str | int) -> ModelVersion:
        """
        A model version by number or alias; clear errors when the model, version or alias is missing.

        :param name: registered model name.
        :param ref: version number, or alias (e.g. ``challenger``).
        """
        from mlflow.exceptions import MlflowException

        ref = str(ref)
        if not ref.isdigit():
            version = self.alias_target(name, ref)
            if version is None:
                aliases = dict(self.registered_model(name).aliases) or "none"
                raise MLPlatConfigError(
                    f"alias {ref!r} is not set on registered model {name!r}; its aliases: {aliases}"
                )
            return version
        try:
            return self.client.get_model_version(name, ref)
        except MlflowException as err:
            if err.error_code in _NOT_FOUND:
                self.registered_model(name)  # names the model when it is the model that is missing
                raise MLPlatConfigError(f"registered model {name!r} has no version {ref}") from None
            raise

    def alias_target(self, name: str, alias: str) -> ModelVersion | None:
        """
        The version an alias points at, None when the alias is not set (error when the model is missing).

        One lookup by key: unlike ``get_registered_model``, its cost does not grow with the versions.

        :param name: registered model name.
        :param alias: alias name.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if err.error_code in _NOT_FOUND:
                raise MLPlatConfigError(
                    f"registered model {name!r} not found in the MLflow registry at {self.registry_uri}"
                ) from None
            if err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in err.message:
                return None
            raise

    def alias_version(self, name: str, alias: str) -> str | None:
        """
        The version number an alias points at, or None when the alias (or the model) does not exist.

        :param name: registered model name.
        :param alias: alias name.
        """
        try:
            version = self.alias_target(name, alias)
        except MLPlatConfigError:
            return None
        return str(version.version) if version else None  # SQL stores answer int, the REST store str

    def version_metrics(self, version: ModelVersion, required: list[str] | tuple[str, ...] = ()) -> dict:
        """
        Metrics of a model version: those of its evaluation run (tag ``mlplat.evaluation_run_id``)
        when it has one, else those of the run that produced it; with that run's id and experiment.

        :param version: the model version.
        :param required: metric names that must be present (error naming the metric and the run).
        """
        run_id = version.tags.get(EVALUATION_RUN_TAG) or version.run_id
        if not run_id:
            raise MLPlatValidationFailed(
                f"{version.name} version {version.version} has no run: no metrics to compare"
            )
        run = self.client.get_run(run_id)
        metrics = dict(run.data.metrics)
        missing = [m for m in required if m not in metrics]
        if missing:
            raise MLPlatValidationFailed(
                f"metric {missing[0]!r} is missing on {version.name} version {version.version} "
                f"(run {run_id}); the run has: {sorted(metrics) or 'no metrics'}"
            )
        return {"run_id": run_id, "experiment_id": run.info.experiment_id, "metrics": metrics}

    def version_ready(
        self, name: str, ref: str | int, newer_than: int | None = None
    ) -> dict[str, Any] | None:
        """
        The version behind ``ref`` once it is READY (and newer than ``newer_than``), else None.

        A missing model, alias or version counts as "not yet"; a failed registration is an error.

        :param name: registered model name.
        :param ref: version number or alias.
        :param newer_than: only a version number greater than this one counts.
        """
        try:
            version = self.model_version(name, ref)
        except MLPlatConfigError:
            return None
        if version.status == "FAILED_REGISTRATION":
            raise MLPlatValidationFailed(
                f"{name} version {version.version} failed to register: {version.status_message}"
            )
        if version.status != "READY" or (newer_than is not None and int(version.version) <= newer_than):
            return None
        return {
            "model_name": name,
            "version": version.version,
            "run_id": version.run_id,
            "model_uri": f"models:/{name}/{version.version}",
        }

    # -- registry writes ---------------------------------------------------------------------------

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """
        Tag a model version. Goes to the registry client directly: ``MlflowClient`` reads the whole
        registered model (all its versions) before every tag or alias write to refuse prompts; callers
        here have just read the version.

        :param name: registered model name.
        :param version: version number.
        :param tags: tag names and values.
        """
        registry = self.client._get_registry_client()
        for key, value in tags.items():
            registry.set_model_version_tag(name, version, key, value)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """
        Point an alias at a version (see :meth:`set_version_tags` on skipping the prompt check).

        :param name: registered model name.
        :param alias: alias name.
        :param version: version number.
        """
        self.client._get_registry_client().set_registered_model_alias(name, alias, version)

    # -- serializing writers of one registered model -----------------------------------------------

    @contextmanager
    def registry_lock(self, name: str, holder: str, timeout: float = 60.0, stale_after: float = 300.0):
        """
        Serialize writers of one registered model across processes and Airflow deployments.

        MLflow has no compare-and-set for aliases; creating a registered model is atomic in every
        backend store, so a short-lived lock model ``<name>.mlplat-lock`` is the mutex. A lock older
        than ``stale_after`` seconds (its holder died) is broken.

        :param name: registered model name.
        :param holder: who holds the lock (shown in the lock model's description and in errors).
        :param timeout: seconds to wait for the lock.
        :param stale_after: seconds after which a lock is considered abandoned.
        """
        from mlflow.exceptions import MlflowException

        lock, token = f"{name}.mlplat-lock", uuid.uuid4().hex
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.create_registered_model(lock, tags={"token": token}, description=holder)
                break
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            try:
                held = self.client.get_registered_model(lock)
            except MlflowException as err:
                if err.error_code in _NOT_FOUND:
                    continue  # released meanwhile
                raise
            if time.time() - held.creation_timestamp / 1000 > stale_after:
                self.log.warning("breaking a stale promotion lock of %s held by %s", name, held.description)
                self._release(lock, held.tags.get("token"))
                continue
            if time.monotonic() > deadline:
                raise MLPlatServiceUnavailable(
                    f"registered model {name!r} stayed locked for {timeout:.0f} s by {held.description!r}"
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            self._release(lock, token)

    def _release(self, lock: str, token: str | None) -> None:
        from mlflow.exceptions import MlflowException

        try:
            if self.client.get_registered_model(lock).tags.get("token") == token:
                self.client._get_registry_client().delete_registered_model(lock)  # no prompt check
        except MlflowException as err:
            if err.error_code not in _NOT_FOUND:
                raise

    # -- UI pages ----------------------------------------------------------------------------------

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """
        The MLflow UI page of a run.

        :param experiment_id: experiment id of the run.
        :param run_id: run id.
        """
        return f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, name: str, version: str | int) -> str:
        """
        The MLflow UI page of a model version.

        :param name: registered model name.
        :param version: version number.
        """
        return f"{self.registry_uri}/#/models/{quote(name, safe='')}/versions/{version}"


def _per_request_credentials(client: MlflowClient, host_creds) -> None:
    """Give a client's tracking and registry REST stores credentials per request, not from env."""
    from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
    from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
    from mlflow.tracking._model_registry.client import ModelRegistryClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    # MlflowClient builds its stores from the environment; these subclasses pin a store instead.
    class _Tracking(TrackingServiceClient):
        def __init__(self, uri: str) -> None:
            self._store = TrackingRestStore(lambda: host_creds(uri))
            super().__init__(uri)

        @property
        def store(self):
            return self._store

    class _Registry(ModelRegistryClient):
        def __init__(self, registry_uri: str, tracking_uri: str) -> None:
            self._store = RegistryRestStore(lambda: host_creds(registry_uri))
            super().__init__(registry_uri, tracking_uri)

        @property
        def store(self):
            return self._store

    client._tracking_client = _Tracking(client.tracking_uri)
    if client._registry_uri.startswith(("http://", "https://")):
        client._registry_client_lazy = _Registry(client._registry_uri, client.tracking_uri)
