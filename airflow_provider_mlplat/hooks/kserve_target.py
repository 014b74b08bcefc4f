"""The rollout target interface and the typed plans a rollout passes through its trigger."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def deployment_name(model_name: str, name: str | None = None) -> str:
    """
    The deployment (InferenceService) that serves a registered model: ``name``, or by default the
    model name in lowercase with dashes for underscores (what KServe accepts).

    :param model_name: registered MLflow model.
    :param name: explicit deployment name (wins when set).
    """
    return name or model_name.replace("_", "-").lower()


class Plan:
    """A dataclass that round-trips through JSON (trigger kwargs, XCom): ``to_dict`` / ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """
        Rebuild from :meth:`to_dict` output; unknown keys are an error naming them.

        :param values: the fields.
        """
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class ModelVersionRef(Plan):
    """
    One registered MLflow model version, as a rollout deploys it.

    :param model_name: registered model name.
    :param version: version number (always text: registries answer int or str depending on the store).
    :param storage_uri: where its artifacts live (the KServe ``storageUri``).
    :param run_id: MLflow run that produced it.
    """

    model_name: str
    version: str
    storage_uri: str
    run_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", str(self.version))


@dataclass(frozen=True)
class TargetConfig(Plan):
    """
    Where a rollout happens, enough for a trigger to rebuild the target.

    :param kind: ``local``, ``knative`` or ``standard`` (see :data:`~airflow_provider_mlplat.hooks.kserve.TARGETS`).
    :param namespace: namespace of the deployment (``local`` for the model server).
    :param url: base URL of the local model server.
    :param kubernetes_conn_id: cncf-kubernetes connection (Kubernetes targets).
    :param deployment_mode: the mode as spelled on the InferenceService or the connection (None: KServe's default).
    :param logger_url: where InferenceServices send their request log.
    :param predictor: extra InferenceService predictor fields (``resources``, ``minReplicas``, ...).
    :param predictor_url: URL template of one predictor's Service in Standard mode (``{name}``,
        ``{predictor}``, ``{namespace}``), for the smoke request to a canary alone.
    """

    kind: str
    namespace: str
    url: str | None = None
    kubernetes_conn_id: str | None = None
    deployment_mode: str | None = None
    logger_url: str | None = None
    predictor: dict[str, Any] = field(default_factory=dict)
    predictor_url: str | None = None


@dataclass(frozen=True)
class Expectation(Plan):
    """
    The state a step waits for (what ``stage``/``shift``/``promote`` return; readiness checks it).

    :param model: local: a loaded model id (``name@version``).
    :param revision: local: the deployment revision the split must reach.
    :param generation: Kubernetes: the ``metadata.generation`` the controller must have observed.
    :param canary: Standard mode: the canary predictor that must be ready.
    :param percent: Standard mode: the canary's traffic percent the status must report.
    """

    model: str | None = None
    revision: int | None = None
    generation: int | None = None
    canary: str | None = None
    percent: int | None = None


@dataclass(frozen=True)
class Deployed:
    """
    What a deployment serves now.

    :param stable: version serving the (rest of the) traffic, None when nothing serves yet.
    :param canary: version under test, if any.
    :param canary_percent: the canary's share of traffic.
    :param mode: ``local``, ``Knative`` or ``Standard``.
    """

    stable: str | None
    canary: str | None
    canary_percent: int
    mode: str


@dataclass(frozen=True)
class AliasConfig(Plan):
    """
    The MLflow aliases a rollout deployed from and restores when it fails.

    :param mlflow_conn_id: ``mlflow`` connection.
    :param alias: alias of the serving version (moved back when it names the failed version).
    :param previous_alias: alias of the version to move it back to.
    :param restore: whether a failed rollout moves ``alias`` back at all.
    """

    mlflow_conn_id: str
    alias: str
    previous_alias: str
    restore: bool = True


@dataclass
class RolloutPlan(Plan):
    """
    Everything a rollout decided before its first change, and its progress: carried through every
    deferral, and enough to roll back from anywhere (the operator, its trigger's ``on_kill``).

    :param deployment: deployment / InferenceService name.
    :param target: where.
    :param model: the version rolled out.
    :param stable: the version serving before (None: first deployment).
    :param previous: what the target needs to restore the old serving state (its ``previous_spec``).
    :param strategy: ``canary`` or ``direct``.
    :param steps: traffic percentages, the last one 100 (promotion).
    :param step: index of the current canary step (None before the first).
    :param smoke_rows: rows of the smoke request.
    :param analysis: :class:`~airflow_provider_mlplat.operators.kserve.CanaryAnalysis` fields (None: no gate).
    :param aliases: the aliases to restore on failure.
    :param origin: ``dag_id``, ``run_id``, ``task_id`` and ``map_index`` of the task (labels, records).
    :param started_at: ISO time the rollout started.
    :param history: one entry per finished wait (phase, percent, status, evidence).
    :param approval: a person's answer before the last step (verdict, who, when), when one was asked.
    """

    deployment: str
    target: TargetConfig
    model: ModelVersionRef
    stable: str | None
    previous: Any
    strategy: str
    steps: list[int]
    aliases: AliasConfig
    origin: dict[str, Any]
    started_at: str
    smoke_rows: list[dict[str, Any]] = field(default_factory=list)
    analysis: dict[str, Any] | None = None
    step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    approval: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RolloutPlan:
        """
        Rebuild from :meth:`to_dict` output, nested plans included.

        :param values: the fields.
        """
        nested = {"target": TargetConfig, "model": ModelVersionRef, "aliases": AliasConfig}
        return super().from_dict({k: nested[k].from_dict(v) if k in nested else v for k, v in values.items()})


class RolloutTarget(ABC):
    """
    Where a rollout happens. The rollout operator drives every target through the same steps:
    ``stage`` (new version ready, no traffic) -> ``smoke`` -> ``shift`` (canary percent) ... ->
    ``promote``, or ``rollback``; ``readiness`` is what the trigger polls. The methods share these
    parameters: ``name`` (deployment / InferenceService), ``model`` (the version being rolled out),
    ``stable`` (the version serving before, None when nothing did), ``current`` (what :meth:`current`
    returned), ``expect`` (what a step returned for readiness to check).

    :param config: the target's settings (see :meth:`KServeHook.target_config`).
    """

    kind = ""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.namespace = config.namespace

    @abstractmethod
    def current(self, name: str) -> Deployed | None:
        """What the deployment serves now; None when it does not exist."""

    def check(self, name: str, current: Deployed | None, canary: bool) -> None:  # noqa: B027 (optional)
        """Fail before any change when the target cannot do what the rollout needs (``canary``: a split)."""

    @abstractmethod
    def stage(
        self,
        name: str,
        model: ModelVersionRef,
        current: Deployed | None,
        origin: dict[str, Any],
        direct: bool,
    ) -> Expectation:
        """Make the new version ready without traffic next to a stable one (with all of it when there is
        none, or when ``direct``); ``origin`` has dag_id, run_id and task_id for labels."""

    @abstractmethod
    def shift(self, name: str, model: ModelVersionRef, stable: str, percent: int) -> Expectation:
        """Give the canary ``percent`` of the traffic."""

    @abstractmethod
    def promote(self, name: str, model: ModelVersionRef, stable: str | None) -> Expectation:
        """Make the new version the stable one with all traffic."""

    @abstractmethod
    def rollback(self, name: str, model: ModelVersionRef, stable: str | None, previous: Any) -> str:
        """Send all traffic back to ``stable`` (remove a deployment the rollout created); says what it did.
        ``previous`` is what :meth:`previous_spec` returned before the rollout."""

    @abstractmethod
    def delete(self, name: str) -> bool:
        """Remove the deployment; False when it did not exist."""

    @abstractmethod
    def smoke(self, name: str, model: ModelVersionRef, request: dict[str, Any]) -> dict[str, Any]:
        """Send a V2 inference ``request`` to the new version only; returns the response body."""

    @abstractmethod
    def selectors(self, name: str, stable: str, model: ModelVersionRef) -> dict[str, str]:
        """PromQL label matchers of the canary and the stable version (keys ``canary``, ``stable``)."""

    #: (request counter, matcher of server errors, latency histogram, latency unit in seconds)
    metrics: tuple[str, str, str, float] = ("", "", "", 1.0)

    def analysis_queries(self, selector: str, window: str) -> dict[str, str]:
        """
        PromQL for ``requests``, ``errors`` (server errors) and ``p99`` (seconds) of one selector.

        :param selector: label matchers of one version (from :meth:`selectors`).
        :param window: PromQL range, e.g. ``60s``.
        """
        counter, errors, histogram, unit = self.metrics
        p99 = f"histogram_quantile(0.99, sum by (le) (rate({histogram}_bucket{{{selector}}}[{window}])))"
        return {
            "requests": f"sum(increase({counter}{{{selector}}}[{window}]))",
            "errors": f"sum(increase({counter}{{{selector},{errors}}}[{window}]))",
            "p99": p99 if unit == 1 else f"{p99} * {unit}",
        }

    @abstractmethod
    async def readiness(self, name: str, expect: Expectation) -> tuple[str, str]:
        """``("ready" | "pending" | "failed", detail)`` of the state a step expects (async, for triggers)."""

    @abstractmethod
    def describe(self, name: str) -> dict[str, Any]:
        """Serving facts for the asset event: url, revision and traffic per version."""

    def previous_spec(self, name: str) -> Any:
        """What :meth:`rollback` needs to restore the serving state from before the rollout."""
        return None
