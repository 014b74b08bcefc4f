"""OpenLineage: the provider's Asset URIs as datasets, and what each operator read and wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

PRODUCER = "https://github.com/mlplat/airflow-provider-mlplat"


@dataclass(frozen=True)
class LineageDataset:
    """
    A dataset an operator read or wrote, with what is worth knowing about it.

    :param uri: an Asset URI (``feast://``, ``mlflow://``, ...), an object storage URI or a local path.
    :param version: its version (a model version, a content hash), if it has one.
    :param facts: JSON-able facts (window, rows, metrics, traffic, drift share), the ``mlplat`` facet.
    """

    uri: str
    version: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def namespace_and_name(uri: str) -> tuple[str, str]:
    """
    OpenLineage's dataset naming: namespace ``scheme://authority`` and the rest as name; local
    paths (and ``file://`` URIs) in namespace ``file``.

    :param uri: an Asset URI, object storage URI or local path.
    """
    if "://" not in uri:
        return "file", str(Path(uri).resolve())
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        return "file", "/" + rest.lstrip("/")
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", path or authority


def asset_to_openlineage(asset: Any, lineage_context: Any) -> Dataset:
    """
    The OpenLineage dataset of one of the provider's Assets (``to_openlineage_converter`` of its schemes).

    :param asset: the Asset.
    :param lineage_context: unused; what Airflow's OpenLineage provider passes.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset

    namespace, name = namespace_and_name(asset.uri)
    return Dataset(namespace=namespace, name=name)


def openlineage_dataset(dataset: LineageDataset) -> Dataset:
    """
    The OpenLineage form of a :class:`LineageDataset`: ``version`` and ``mlplat`` facets.

    :param dataset: what an operator recorded.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset, DatasetFacet
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

    facets: dict[str, Any] = {}
    if dataset.version is not None:
        facets["version"] = DatasetVersionDatasetFacet(datasetVersion=str(dataset.version), producer=PRODUCER)
    if dataset.facts:
        facets["mlplat"] = DatasetFacet(producer=PRODUCER).with_additional_properties(**dataset.facts)
    namespace, name = namespace_and_name(dataset.uri)
    return Dataset(namespace=namespace, name=name, facets=facets)


class LineageMixin:
    """
    For operators: ``execute()`` records what it read and wrote with :meth:`record_lineage`;
    Airflow's OpenLineage listener reads it through ``get_openlineage_facets_on_complete``.
    """

    _lineage: tuple[list[LineageDataset], list[LineageDataset]] = ([], [])

    def record_lineage(self, inputs: list[LineageDataset] = (), outputs: list[LineageDataset] = ()) -> None:
        """
        Remember this run's inputs and outputs.

        :param inputs: datasets read.
        :param outputs: datasets written.
        """
        self._lineage = (list(inputs), list(outputs))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """
        What this run read and wrote, as OpenLineage datasets.

        :param task_instance: the finished task instance (unused: execute() recorded everything).
        """
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs, outputs = self._lineage
        return OperatorLineage(
            inputs=[openlineage_dataset(d) for d in inputs], outputs=[openlineage_dataset(d) for d in outputs]
        )
