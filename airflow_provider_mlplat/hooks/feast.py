"""Feast feature store hook."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.base import MLPlatHook, scoped_env

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_contents import RepoContents

log = logging.getLogger(__name__)

#: connection extras that replace a top-level key of feature_store.yaml
_OVERRIDES = ("online_store", "offline_store", "batch_engine")
#: environment variable through which the repo's code and feature_store.yaml see the data folder
DATA_DIR_ENV = "MLPLAT_FEAST_DATA_DIR"
#: Feast's file sources select ``start <= ts <= end``; one microsecond less keeps windows half-open
_EPSILON = timedelta(microseconds=1)
#: online stores may keep event times at second precision (SQLite does)
_TS_PRECISION = timedelta(seconds=1)
#: declared Feast value type -> the other value types (Feast's own mapping of the source's Arrow
#: type) that Feast 0.67 materializes into it with the right values; a Set reads as its List.
#: tests/integration/test_feast_types.py checks them against `feast materialize`
_CONVERTS = {
    "INT64": {"INT32"},
    "FLOAT": {"DOUBLE", "INT32", "INT64"},  # declaring Float32 narrows on purpose
    "DOUBLE": {"INT64", "DECIMAL"},  # Feast takes int64 and Decimal values for a double, not int32
    "BOOL": {"INT64"},  # ... and int64 values for a bool
    "STRING": {"JSON"},  # Feast maps large_string to JSON
    "PDF_BYTES": {"BYTES"},
    "IMAGE_BYTES": {"BYTES"},
    "UUID": {"STRING", "JSON"},
    "TIME_UUID": {"STRING", "JSON"},
    "DECIMAL": {"STRING", "JSON"},
    "JSON": {"STRING", "STRUCT"},  # JSON text, or a struct Feast writes as JSON
    "MAP": {"STRUCT", "STRING", "JSON"},  # a struct, or JSON text
    "STRUCT": {"STRING", "JSON"},
    "MAP_LIST": {"STRING", "JSON"},
    "STRUCT_LIST": {"STRING", "JSON"},
    "INT64_LIST": {"INT32_LIST"},
    "FLOAT_LIST": {"DOUBLE_LIST"},
    "DOUBLE_LIST": {"FLOAT_LIST"},
    "STRING_LIST": {"JSON_LIST"},
    "JSON_LIST": {"STRING_LIST"},
    "UUID_LIST": {"STRING_LIST", "JSON_LIST"},
    "TIME_UUID_LIST": {"STRING_LIST", "JSON_LIST"},
    "DECIMAL_LIST": {"STRING_LIST", "JSON_LIST"},
}
#: source value types Feast's mapping gives but its materialization cannot write (0.67)
_UNWRITABLE = {
    "MAP": "Feast reads a parquet map column as arrays of key-value pairs and fails on them: "
    "store the map as a struct or as JSON text",
    "MAP_LIST": "Feast reads a list column as arrays and fails on them: store the list of maps as JSON text",
}
#: why Feast 0.67 fails on a declared type whatever the Arrow type
_NO_SOURCE = {
    "ZONED_TIMESTAMP": "Feast materializes no Arrow column as a ZonedTimestamp (it gets numpy datetimes, "
    "not the datetime objects it wants)",
    "SCALAR_MAP": "Feast materializes no Arrow column as a ScalarMap (it cannot read a parquet map column)",
}


@dataclass(frozen=True)
class WindowRows:
    """
    What a window of one feature view holds in the offline store, read before anything is written.

    :param view: feature view name.
    :param rows: rows the window materializes (the latest row of each entity).
    :param sample: those rows, or a deterministic sample of them, to read back after the write.
    """

    view: str
    rows: int
    sample: pa.Table


class FeastHook(MLPlatHook):
    """
    Opens a Feast feature repo, with the online store, offline store, batch engine and registry
    optionally replaced by the connection (e.g. SQLite on a laptop, Redis in production) without
    editing the repo.

    The connection's ``data_dir`` extra (default ``<repo>/data``) is the raw data folder: the repo's
    code and feature_store.yaml see it as ``$MLPLAT_FEAST_DATA_DIR`` while the hook loads them. With
    the Ray compute engine, ``ray_conn_id`` names the Ray connection whose token the driver uses.

    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    conn_name_attr = "feast_conn_id"
    conn_type = "feast"
    default_conn_name = "feast_default"
    hook_name = "Feast"
    required_extras = ("feast",)

    def __init__(self, feast_conn_id: str = default_conn_name) -> None:
        super().__init__(conn_id=feast_conn_id)

    # -- configuration --------------------------------------------------------------------------

    @property
    def repo_path(self) -> Path:
        """The feature repo folder; it must hold a feature_store.yaml."""
        value = self.extra("repo_path")
        if not value:
            raise MLPlatConfigError(
                f"connection {self.conn_id!r} has no repo_path extra: set the feature repo folder"
            )
        path = Path(os.path.expandvars(value)).expanduser()
        if not (path / "feature_store.yaml").is_file():
            raise MLPlatConfigError(
                f"connection {self.conn_id!r}: repo_path {str(path)!r} holds no feature_store.yaml"
            )
        return path.resolve()

    @property
    def data_dir(self) -> Path:
        """The raw data folder the repo's file sources read (extra ``data_dir``, default ``<repo>/data``)."""
        value = self.extra("data_dir")
        return (Path(os.path.expandvars(value)).expanduser() if value else self.repo_path / "data").resolve()

    @contextlib.contextmanager
    def repo_env(self) -> Iterator[None]:
        """
        The environment the repo is loaded and materialized in, for one block: the data folder and,
        with the Ray compute engine, the Ray driver settings and the token of ``ray_conn_id`` (Ray
        reads them when first imported, so Feast calls that may import it belong inside the block).
        """
        env: dict[str, str | None] = {DATA_DIR_ENV: str(self.data_dir)}
        engine = self.repo_config_dict().get("batch_engine") or {}
        if self.engine_type == "ray.engine":
            # A driver under `uv run` (`uv run airflow ...`, `uv run pytest`): Ray would start every
            # worker as `uv run --no-sync python` in an uploaded copy of the working directory, whose
            # fresh venv lacks ray: each worker dies at start, Ray Data's first ray.get waits forever.
            env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
            if self.extra("ray_conn_id"):
                token = self.get_connection(self.extra("ray_conn_id")).password
                env.update(RAY_AUTH_MODE="token" if token else None, RAY_AUTH_TOKEN=token or None)
            host = str(engine.get("ray_address") or "").removeprefix("ray://").rsplit(":", 1)[0]
            if host in ("127.0.0.1", "localhost"):  # a head on loopback: keep the driver on it too
                env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        with scoped_env(env):
            yield

    @property
    def engine_type(self) -> str:
        """The batch engine's type (``local``, ``ray.engine``, ...), read without loading the engine."""
        engine = self.repo_config_dict().get("batch_engine") or "local"
        return engine.get("type", "local") if isinstance(engine, dict) else str(engine)

    def repo_config_dict(self) -> dict[str, Any]:
        """The repo's feature_store.yaml as a dict, with the connection's overrides applied."""
        import yaml

        with scoped_env({DATA_DIR_ENV: str(self.data_dir)}):
            text = os.path.expandvars((self.repo_path / "feature_store.yaml").read_text())
        raw = yaml.safe_load(text)
        for key in _OVERRIDES:
            override = self.json_extra(key)
            if override is not None:
                raw[key] = override
        if self.extra("registry"):
            raw["registry"] = self.extra("registry")
        return raw

    @cached_property
    def store(self) -> FeatureStore:
        """The :class:`feast.FeatureStore` (cached)."""
        from feast import FeatureStore
        from feast.repo_config import RepoConfig

        repo_path = self.repo_path
        config = RepoConfig(**self.repo_config_dict())
        config.repo_path = repo_path
        return FeatureStore(repo_path=str(repo_path), config=config)

    def get_conn(self) -> FeatureStore:
        """Return the cached :class:`feast.FeatureStore`."""
        return self.store

    def probe(self) -> str:
        """Load the registry and count what it defines."""
        views = self.store.list_feature_views()
        return f"Feast project {self.store.project!r} at {self.repo_path}: {len(views)} feature view(s)"

    # -- registry ---------------------------------------------------------------------------------

    def parse_repo(self) -> RepoContents:
        """Import the repo's definitions the way ``feast apply`` does, without leaving them in this process."""
        from feast.project import Project
        from feast.repo_operations import get_repo_files, parse_repo

        repo = self.repo_path
        modules = [
            str(p.relative_to(repo).with_suffix("")).replace(os.sep, ".") for p in get_repo_files(repo)
        ]
        with contextlib.chdir(repo), self.repo_env(), _on_sys_path(str(repo)), _forgotten(modules):
            contents = parse_repo(repo)
        if not contents.projects:
            contents.projects.append(
                Project(name=self.store.project, description=self.store.config.project_description or "")
            )
        return contents

    def apply(self) -> list[dict[str, str]]:
        """
        Apply the repo's definitions to the registry and online store; with nothing changed this
        writes nothing. Returns what changed (kind, name, change).
        """
        from feast.diff.property_diff import TransitionType
        from feast.feature_view import DUMMY_ENTITY_NAME
        from feast.repo_operations import apply_total_with_repo_instance

        store, repo = self.store, self.parse_repo()
        registry_diff, infra_diff, _ = store.plan(repo)
        changes = [
            {
                "kind": diff.feast_object_type.value,
                "name": diff.name,
                "change": diff.transition_type.name.lower(),
            }
            for diff in registry_diff.feast_object_diffs
            if diff.name != DUMMY_ENTITY_NAME and _changed(diff)
        ] + [
            {
                "kind": f"infra {diff.infra_object_type}",
                "name": diff.name,
                "change": diff.transition_type.name.lower(),
            }
            for diff in infra_diff.infra_object_diffs
            if diff.transition_type != TransitionType.UNCHANGED
        ]
        if changes:
            with contextlib.chdir(self.repo_path), self.repo_env():
                apply_total_with_repo_instance(
                    store, store.project, store.registry, repo, skip_source_validation=False
                )
        return changes

    def feature_views(self, names: list[str] | None = None) -> list[FeatureView]:
        """
        Feature views by name (all online ones when ``names`` is empty); an unknown name fails,
        naming the views that exist.

        :param names: feature view names.
        """
        views = {fv.name: fv for fv in self.store.list_feature_views()}
        if not names:
            return [fv for fv in views.values() if fv.online]
        unknown = [n for n in names if n not in views]
        if unknown:
            odfvs = {v.name for v in self.store.list_on_demand_feature_views()}
            hint = f" ({', '.join(sorted(set(unknown) & odfvs))}: on demand, computed at request time)"
            raise MLPlatConfigError(
                f"unknown feature view(s) {unknown} in Feast project {self.store.project!r}; "
                f"existing: {sorted(views) or 'none (run FeastApplyOperator first)'}"
                + (hint if set(unknown) & odfvs else "")
            )
        return [views[n] for n in names]

    def feature_service(self, name: str) -> FeatureService:
        """
        A feature service by name; an unknown name fails, naming the services that exist.

        :param name: feature service name.
        """
        services = sorted(s.name for s in self.store.list_feature_services())
        if name not in services:
            raise MLPlatConfigError(
                f"unknown feature service {name!r} in Feast project {self.store.project!r}; "
                f"existing: {services or 'none (run FeastApplyOperator first)'}"
            )
        return self.store.get_feature_service(name)

    def watermark(self, view: str) -> datetime | None:
        """
        The end of the latest window materialized for a feature view (Feast's materialization record,
        which :meth:`materialize` writes only after verifying the online store), or None.

        :param view: feature view name.
        """
        self.store.refresh_registry()
        fv = self.feature_views([view])[0]
        return max((end for _, end in fv.materialization_intervals), default=None)

    # -- materialization --------------------------------------------------------------------------

    def window_rows(self, fv: FeatureView, start: datetime, end: datetime, sample_size: int) -> WindowRows:
        """
        Read what a window holds for one feature view from the offline store (the latest row of
        each entity, as the batch engines select it) and check its columns against the view's
        schema. Fails on a missing column or a wrong type, before anything is written.

        :param fv: the feature view.
        :param start: window start.
        :param end: window end (exclusive).
        :param sample_size: how many rows to keep for the read-back; all when fewer.
        """
        import numpy as np

        source = fv.batch_source
        mapping = source.field_mapping or {}
        self._check_engine(fv, start)
        self._check_source_files(fv)
        try:
            with self.repo_env():
                table = (
                    self.store._get_provider()
                    .offline_store.pull_latest_from_table_or_query(
                        config=self.store.config,
                        data_source=source,
                        join_key_columns=[_source_name(mapping, c.name) for c in fv.entity_columns],
                        feature_name_columns=[_source_name(mapping, f.name) for f in fv.features],
                        timestamp_field=source.timestamp_field,
                        created_timestamp_column=source.created_timestamp_column or None,
                        start_date=start,
                        end_date=end - _EPSILON,
                    )
                    .to_arrow()
                )
        except Exception as err:
            raise MLPlatValidationFailed(
                f"feature view {fv.name!r}: reading its source {_describe(source)} for "
                f"[{start.isoformat()}, {end.isoformat()}) failed: {type(err).__name__}: {err}"
            ) from err
        table = _whole_numbers_as_integers(fv, table)
        problems = _schema_problems(fv, table.schema)
        if problems:
            raise MLPlatValidationFailed(
                f"feature view {fv.name!r}: source {_describe(source)} does not match the view's schema: "
                + "; ".join(problems)
            )
        if mapping:
            table = table.rename_columns([mapping.get(c, c) for c in table.column_names])
        rows = table.num_rows
        if rows > sample_size:
            picked = np.sort(np.random.default_rng(0).choice(rows, size=sample_size, replace=False))
            table = table.take(picked)
        return WindowRows(view=fv.name, rows=rows, sample=table.combine_chunks())

    def _check_engine(self, fv: FeatureView, start: datetime) -> None:
        """Feast's Ray engine drops rows older than now - ttl: refuse a window it would silently skip."""
        from datetime import UTC

        horizon = datetime.now(UTC) - fv.ttl if fv.ttl else None
        if self.engine_type == "ray.engine" and horizon and start < horizon:
            raise MLPlatConfigError(
                f"feature view {fv.name!r}: Feast's Ray engine drops rows older than its ttl ({fv.ttl}) "
                f"before now, so it would skip the window from {start.isoformat()} to {horizon.isoformat()}; "
                "materialize a window that old with the local engine (a connection without batch_engine)"
            )

    def _check_source_files(self, fv: FeatureView) -> None:
        """A local parquet file source: every file must hold the view's columns with their types."""
        import pyarrow.dataset as ds
        from feast.infra.offline_stores.file_source import FileSource

        source = fv.batch_source
        if not isinstance(source, FileSource) or "://" in source.path:
            return
        path = Path(source.path) if Path(source.path).is_absolute() else self.repo_path / source.path
        if not path.exists():
            raise MLPlatValidationFailed(f"feature view {fv.name!r}: its source {str(path)!r} does not exist")
        bad = []
        for fragment in ds.dataset(path, format="parquet").get_fragments():
            problems = _schema_problems(fv, fragment.physical_schema)
            if problems:
                bad.append(f"{Path(fragment.path).name}: {'; '.join(problems)}")
        if bad:
            raise MLPlatValidationFailed(
                f"feature view {fv.name!r}: {len(bad)} file(s) of its source {str(path)!r} do not match "
                f"the view's schema: {' | '.join(bad[:5])}"
            )

    def materialize(
        self, fv: FeatureView, start: datetime, end: datetime, expected: WindowRows, write_batch_size: int
    ) -> float:
        """
        Write one feature view's window to the online store with the configured batch engine, in
        batches of ``write_batch_size`` rows (a SQLite online store written from this process takes
        them all in one transaction); read back the expected rows; only then record the window in
        the registry. Returns the seconds the write took.

        :param fv: the feature view.
        :param start: window start.
        :param end: window end (exclusive).
        :param expected: what :meth:`window_rows` read for this window.
        :param write_batch_size: rows per online-store write (bounds the memory of a write).
        """
        store = self.store
        store.config.materialization_config.online_write_batch_size = write_batch_size
        started = time.monotonic()
        if expected.rows:
            provider = store._get_provider()
            with self.repo_env(), _one_sqlite_transaction(provider.online_store, store.config), _gc_frozen():
                provider.materialize_single_feature_view(
                    config=store.config,
                    feature_view=fv,
                    start_date=start,
                    end_date=end - _EPSILON,
                    registry=store.registry,
                    project=store.project,
                    tqdm_builder=_no_progress_bar,
                )
        seconds = time.monotonic() - started
        self.verify(fv, expected)
        store.registry.apply_materialization(fv, store.project, start, end)
        return seconds

    def verify(self, fv: FeatureView, expected: WindowRows) -> None:
        """
        Read the expected rows back from the online store: each must be there with its values, or
        with a newer event timestamp. Batch engines may only log a failed write; this catches it.

        :param fv: the feature view.
        :param expected: what :meth:`window_rows` read for the window.
        """
        from feast.utils import _convert_arrow_to_proto, make_tzaware

        if not expected.sample.num_rows:
            return
        key_types = {c.name: c.dtype.to_value_type() for c in fv.entity_columns}
        rows = _convert_arrow_to_proto(expected.sample, fv, key_types)
        provider, bad, chunk = self.store._get_provider(), [], 1000
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            found = provider.online_read(self.store.config, fv, [r[0] for r in part])
            for (key, values, ts, _), (found_ts, found_values) in zip(part, found, strict=True):
                if found_ts is None:
                    bad.append((key, "missing"))
                    continue
                lag = make_tzaware(ts) - make_tzaware(found_ts)
                if lag >= _TS_PRECISION:
                    bad.append((key, f"stale: event time {found_ts} < {ts}"))
                elif lag > -_TS_PRECISION:  # the same row: its values must match
                    diff = [f for f, v in values.items() if (found_values or {}).get(f) != v]
                    if diff:
                        bad.append((key, f"different values of {diff}"))
        if bad:
            examples = "; ".join(
                f"{dict(zip(k.join_keys, [_plain(v) for v in k.entity_values], strict=True))}: {why}"
                for k, why in bad[:3]
            )
            raise MLPlatError(
                f"feature view {fv.name!r}: {len(bad)} of {len(rows)} rows read back from the online "
                f"store do not match what was materialized ({expected.rows} rows in the window); "
                f"e.g. {examples}. The window is not recorded as materialized: retry the task."
            )


def _schema_problems(fv: FeatureView, schema: pa.Schema) -> list[str]:
    """What is missing from, or has a type Feast cannot materialize in, a source schema for a feature view."""
    source = fv.batch_source
    mapping = source.field_mapping or {}
    declared = {c.name: c.dtype for c in fv.entity_columns}
    declared.update({f.name: f.dtype for f in fv.features})
    problems = []
    for name, dtype in declared.items():
        column = _source_name(mapping, name)
        if column not in schema.names:
            problems.append(f"column {column!r} is missing")
            continue
        problem = _type_problem(schema.field(column).type, dtype)
        if problem:
            problems.append(f"column {column!r} is {problem}")
    if source.timestamp_field not in schema.names:
        problems.append(f"timestamp column {source.timestamp_field!r} is missing")
    return problems


def _whole_numbers_as_integers(fv: FeatureView, table: pa.Table) -> pa.Table:
    """
    Feast's file reader passes the data through pandas, which turns an integer column with nulls into
    floats: cast such a column of a declared integer back when every value is whole.
    """
    import pyarrow as pa
    from feast.type_map import feast_value_type_to_pa

    mapping = fv.batch_source.field_mapping or {}
    for field in [*fv.entity_columns, *fv.features]:
        column = _source_name(mapping, field.name)
        value_type = field.dtype.to_value_type()
        if column not in table.column_names or value_type.name not in ("INT32", "INT64"):
            continue
        if pa.types.is_floating(table.schema.field(column).type):
            with contextlib.suppress(pa.ArrowInvalid):  # a fraction or out of range: the check says so
                integers = table.column(column).cast(feast_value_type_to_pa(value_type))
                table = table.set_column(table.column_names.index(column), column, integers)
    return table


def _type_problem(arrow: pa.DataType, dtype: Any) -> str | None:
    """Why Feast cannot materialize a source column of an Arrow type as a Feast type, or None."""
    import pyarrow as pa
    from feast.types import Struct

    declared, found = dtype.to_value_type().name, _value_type(arrow)
    described = f"{arrow} ({found or 'no Feast type'}), the feature view declares {declared} ({dtype})"
    if declared in _NO_SOURCE:
        return f"{described}: {_NO_SOURCE[declared]}"
    if found in _UNWRITABLE:
        return f"{described}: {_UNWRITABLE[found]}"
    listed = declared.replace("_SET", "_LIST")  # Feast reads a set from a list column
    if found not in {"NULL", listed, *_CONVERTS.get(listed, ())}:  # NULL: all values missing
        return described
    if isinstance(dtype, Struct) and pa.types.is_struct(arrow):
        fields = sorted(arrow.field(i).name for i in range(arrow.num_fields))
        if fields != sorted(dtype.fields):
            return f"{described}: its fields {fields} are not the declared {sorted(dtype.fields)}"
    return None


def _value_type(arrow: pa.DataType) -> str:
    """
    Feast's value type of an Arrow type (its ``pa_to_feast_value_type``), with every list spelling
    (parquet's ``element``, large, fixed size) read as a list; '' when Feast has none.
    """
    import pyarrow as pa
    from feast.type_map import pa_to_feast_value_type
    from feast.value_type import ValueType

    if pa.types.is_list(arrow) or pa.types.is_large_list(arrow) or pa.types.is_fixed_size_list(arrow):
        item = arrow.value_type
        if pa.types.is_list(item) or pa.types.is_large_list(item) or pa.types.is_fixed_size_list(item):
            return "VALUE_LIST"
        listed = f"{_value_type(item)}_LIST"
        return listed if listed in ValueType.__members__ else ""
    if pa.types.is_dictionary(arrow):  # e.g. a pandas category: Feast's reader decodes it
        return _value_type(arrow.value_type)
    if pa.types.is_large_binary(arrow):  # Feast's reader hands it over as binary
        return "BYTES"
    if pa.types.is_decimal(arrow):  # Feast's conversion takes the Decimal values it reads
        return "DECIMAL"
    if pa.types.is_date(arrow):  # Feast's reader hands dates over as midnight UTC timestamps
        return "UNIX_TIMESTAMP"
    try:
        return pa_to_feast_value_type(str(arrow)).name
    except KeyError:
        return ""


def _changed(diff: Any) -> bool:
    """
    Whether a registry diff is a real change: a materialization stamps new timestamps into the
    data sources stored with feature views, which Feast's diff reports as an update.
    """
    from feast.diff.property_diff import TransitionType

    if diff.transition_type != TransitionType.UPDATE:
        return diff.transition_type != TransitionType.UNCHANGED
    return any(not _same_but_meta(p.val_existing, p.val_declared) for p in diff.feast_object_property_diffs)


def _same_but_meta(existing: Any, declared: Any) -> bool:
    """Two protos that differ at most in their ``meta`` (created / last updated timestamps)."""
    if type(existing) is not type(declared) or not hasattr(existing, "DESCRIPTOR"):
        return False
    if "meta" not in existing.DESCRIPTOR.fields_by_name:
        return existing == declared
    a, b = type(existing)(), type(declared)()
    a.CopyFrom(existing)
    b.CopyFrom(declared)
    a.ClearField("meta")
    b.ClearField("meta")
    return a == b


def _source_name(mapping: dict[str, str], column: str) -> str:
    """The source column a (possibly renamed) feature view column comes from."""
    return next((src for src, dst in mapping.items() if dst == column), column)


def _describe(source: Any) -> str:
    return repr(getattr(source, "path", None) or source.name)


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("val")
    return getattr(value, kind) if kind else None


def _no_progress_bar(length: int) -> Any:
    """Feast asks for a tqdm bar; progress goes to the task log per feature view instead."""
    from tqdm import tqdm

    return tqdm(total=length, disable=True)


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """
    Keep the objects alive before the write out of the cyclic GC's full collections while it runs:
    each write batch's protobuf rows outlive the young generations, so full collections come every
    few batches and walked the whole process (Airflow, Feast, pandas) each time -- 4.3 s of GC in a
    25 s write of 200k rows, 0.8 s with this.
    """
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _one_sqlite_transaction(online_store: Any, config: Any) -> Iterator[None]:
    """
    Feast's SQLite online store commits every write batch. Keys land all over its primary-key index,
    so each commit rewrites (and journals, and syncs) most of the index: at 1M rows, batches of 10k
    took 1.85x as long as one batch. Inside this block its batches go into one transaction, committed
    at the end or rolled back on an error (no partial window either). Other stores pass through.
    """
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    if not isinstance(online_store, SqliteOnlineStore):
        yield
        return
    conn = online_store._get_conn(config)
    online_store._conn = _Uncommitted(conn)
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()
    finally:
        online_store._conn = conn


class _Uncommitted:
    """A sqlite3 connection whose ``with`` block leaves the transaction open (see above)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def _on_sys_path(path: str) -> Iterator[None]:
    sys.path.insert(0, path)
    try:
        yield
    finally:
        sys.path.remove(path)


@contextlib.contextmanager
def _forgotten(modules: list[str]) -> Iterator[None]:
    """Import the repo's modules afresh and drop them afterwards (repos share module names)."""
    for name in modules:
        sys.modules.pop(name, None)
    try:
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)
