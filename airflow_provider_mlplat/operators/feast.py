"""Feast operators: apply the feature repo, materialize windows, build point-in-time training sets."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias, BaseOperator, Metadata

from airflow_provider_mlplat.artifacts import read_dataframe, task_artifact_dir, write_parquet
from airflow_provider_mlplat.assets import feast_feature_view_asset
from airflow_provider_mlplat.exceptions import MLPlatConfigError, MLPlatValidationFailed
from airflow_provider_mlplat.hooks.feast import FeastHook
from airflow_provider_mlplat.lineage import LineageDataset, LineageMixin
from airflow_provider_mlplat.times import as_utc

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd
    from airflow.sdk import Context


#: row number column added to the entity rows while Feast joins the features
_ROW = "__mlplat_row"


#: the AssetAlias a materialization adds ``feast://<project>/<view>`` events to for the views its
#: DAG did not declare among ``outlets`` (declared ones get their event's extra filled instead)
MATERIALIZED = AssetAlias("mlplat-feast-materialized")


class FeastApplyOperator(BaseOperator):
    """
    Apply the feature repo's definitions (``feast apply``). With nothing changed it writes nothing;
    returns what changed: ``{"project", "changed", "changes": [{"kind", "name", "change"}]}``.

    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    ui_color = "#e8f4fd"

    def __init__(self, *, feast_conn_id: str = FeastHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feast_conn_id = feast_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        hook = FeastHook(self.feast_conn_id)
        changes = hook.apply()
        for change in changes:
            self.log.info("%s %s %s", change["change"], change["kind"], change["name"])
        if not changes:
            self.log.info("Feast project %r is up to date: nothing applied", hook.store.project)
        return {"project": hook.store.project, "changed": bool(changes), "changes": changes}


class FeastMaterializeOperator(LineageMixin, BaseOperator):
    """
    Materialize an explicit window of feature views into the online store: by default the run's
    data interval, starting ``overlap`` earlier for late data.

    Every view's window is read and checked against the view's schema before anything is written;
    writes go in batches of ``write_batch_size`` rows; afterwards the rows are read back from the
    online store and only then is the window recorded as materialized. Each view's Asset
    (``feast://<project>/<view>``) gets an event carrying the window and row count: as a declared
    outlet, or else through :data:`MATERIALIZED`, which the operator declares itself. Returns ``{"project", "start", "end", "rows", "feature_views": {view:
    {"rows", "seconds"}}, "online_store"}``.

    :param feature_views: feature view names (templated); empty means every online feature view.
    :param start: window start (templated; datetime or ISO 8601); default: the data interval start.
    :param end: window end, exclusive (templated); default: the data interval end.
    :param overlap: how much earlier than ``start`` the window begins (seconds or timedelta).
    :param write_batch_size: rows per online-store write; bounds the memory a write needs.
    :param verify_rows: rows read back per feature view after the write (all of them when fewer).
    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    template_fields: Sequence[str] = ("feature_views", "start", "end")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        feature_views: list[str] | None = None,
        start: Any = None,
        end: Any = None,
        overlap: timedelta | float = 0,
        write_batch_size: int = 10_000,
        verify_rows: int = 10_000,
        feast_conn_id: str = FeastHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), MATERIALIZED]
        super().__init__(**kwargs)
        self.feature_views = feature_views
        self.start = start
        self.end = end
        self.overlap = overlap
        self.write_batch_size = write_batch_size
        self.verify_rows = verify_rows
        self.feast_conn_id = feast_conn_id

    def window(self, context: Context) -> tuple[datetime, datetime]:
        """
        The window to materialize, from the parameters or the run's data interval.

        :param context: the task's Airflow context.
        """
        start = self.start if self.start is not None else context.get("data_interval_start")
        end = self.end if self.end is not None else context.get("data_interval_end")
        if start is None or end is None:
            raise MLPlatConfigError("this run has no data interval: pass start and end explicitly")
        overlap = self.overlap if isinstance(self.overlap, timedelta) else timedelta(seconds=self.overlap)
        if overlap < timedelta(0):
            raise MLPlatConfigError(f"overlap={self.overlap!r} must not be negative")
        start, end = as_utc("start", start) - overlap, as_utc("end", end)
        if start >= end:
            raise MLPlatConfigError(
                f"empty window: start {start.isoformat()} is not before end {end.isoformat()}"
            )
        return start, end

    def execute(self, context: Context) -> dict[str, Any]:
        for name, value in (("write_batch_size", self.write_batch_size), ("verify_rows", self.verify_rows)):
            if not isinstance(value, int) or value < 1:
                raise MLPlatConfigError(f"{name}={value!r} must be a positive integer")
        start, end = self.window(context)
        hook = FeastHook(self.feast_conn_id)
        project = hook.store.project
        views = hook.feature_views(list(self.feature_views or []))
        assets = {fv.name: feast_feature_view_asset(project, fv.name) for fv in views}
        declared = {a.uri for a in self.outlets if isinstance(a, Asset)}
        window = f"[{start.isoformat()}, {end.isoformat()})"
        store_type = hook.store.config.online_store.type
        self.log.info(
            "Materializing %d feature view(s) of %r for %s into %s", len(views), project, window, store_type
        )
        planned = [hook.window_rows(fv, start, end, self.verify_rows) for fv in views]
        for expected in planned:
            self.log.info("%s: %d row(s) to write", expected.view, expected.rows)
        report: dict[str, dict[str, Any]] = {}
        for fv, expected in zip(views, planned, strict=True):
            self.log.info(
                "%s: writing %d row(s) in batches of %d", fv.name, expected.rows, self.write_batch_size
            )
            seconds = hook.materialize(fv, start, end, expected, self.write_batch_size)
            self.log.info(
                "%s: %d row(s) written in %.1f s; %d read back and verified",
                fv.name,
                expected.rows,
                seconds,
                expected.sample.num_rows,
            )
            report[fv.name] = {"rows": expected.rows, "seconds": round(seconds, 2)}
        outputs = []
        for name, asset in assets.items():
            extra = {
                "project": project,
                "feature_view": name,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "rows": report[name]["rows"],
                "online_store": store_type,
            }
            outputs.append(LineageDataset(asset.uri, facts=extra))
            if asset.uri in declared:
                _attach(context, Metadata(asset, extra))
            else:
                context["outlet_events"][MATERIALIZED].add(asset, extra=extra)
        self.record_lineage(outputs=outputs)
        return {
            "project": project,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "rows": sum(r["rows"] for r in report.values()),
            "feature_views": report,
            "online_store": store_type,
        }


class FeastHistoricalFeaturesOperator(LineageMixin, BaseOperator):
    """
    Build a point-in-time correct training set for a feature service and write it as parquet to
    artifact storage: the entity rows' columns (join keys, ``event_timestamp``, request data), the
    service's features under their plain names, and the label (none for a frame to score, with
    ``label_column=None``). Entity rows lacking a feature value at their event time (none within
    the view's TTL) are dropped and counted, or kept with NaN.
    Returns ``{"uri", "rows", "features", "label", "content_hash" (SHA-256 of the file),
    "feature_service", "rows_missing_features"}``; the data never goes to XCom.

    :param feature_service: feature service name (templated).
    :param entity_source: the labelled entity rows (templated): a parquet file or folder or a CSV
        file (path or URI), or a SQL query when ``entity_conn_id`` is set.
    :param label_column: label column of the entity rows (templated); None for unlabelled rows
        (batch scoring).
    :param start: keep entity rows at or after this time (templated; optional).
    :param end: keep entity rows before this time (templated; optional).
    :param entity_conn_id: Airflow connection of the database ``entity_source`` queries.
    :param drop_incomplete_rows: drop entity rows lacking a feature value (else keep them with NaN).
    :param feast_conn_id: Airflow connection id of type ``feast``.
    """

    template_fields: Sequence[str] = ("feature_service", "entity_source", "label_column", "start", "end")
    template_ext: Sequence[str] = (".sql",)
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        feature_service: str,
        entity_source: str,
        label_column: str | None = "completed",
        start: Any = None,
        end: Any = None,
        entity_conn_id: str | None = None,
        drop_incomplete_rows: bool = True,
        feast_conn_id: str = FeastHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.feature_service = feature_service
        self.entity_source = entity_source
        self.label_column = label_column
        self.start = start
        self.end = end
        self.entity_conn_id = entity_conn_id
        self.drop_incomplete_rows = drop_incomplete_rows
        self.feast_conn_id = feast_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        hook = FeastHook(self.feast_conn_id)
        service = hook.feature_service(self.feature_service)
        entities, keys = self._entity_rows(hook, service)
        self.log.info("Retrieving %s for %d entity row(s)", service.name, len(entities))
        features = [f.name for p in service.feature_view_projections for f in p.features]
        with hook.repo_env():
            found = hook.store.get_historical_features(
                entity_df=entities.assign(**{_ROW: range(len(entities))}), features=service
            ).to_df()
        # Feast's file offline store drops entity rows that have only later feature rows; keep
        # every entity row (features missing = NaN), as point-in-time semantics say.
        frame = entities.merge(found[[_ROW, *features]], left_index=True, right_on=_ROW, how="left")
        label = [self.label_column] if self.label_column else []
        frame = frame[[c for c in entities.columns if c not in label] + features + label]
        frame = frame.sort_values(["event_timestamp", *keys], kind="stable").reset_index(drop=True)
        incomplete = frame[features].isna().any(axis=1)
        if incomplete.any():
            action = "dropped" if self.drop_incomplete_rows else "kept with NaN"
            self.log.warning(
                "%d of %d row(s) lack a feature value at their event time: %s",
                incomplete.sum(),
                len(frame),
                action,
            )
            if self.drop_incomplete_rows:
                frame = frame[~incomplete].reset_index(drop=True)
        if frame.empty:
            raise MLPlatValidationFailed(
                f"none of the {len(incomplete)} entity row(s) has every feature of {service.name!r} at its "
                "event time: is the feature data materialized for that period?"
            )
        path = task_artifact_dir(context) / "training_set.parquet"
        uri, content_hash = write_parquet(path, frame)
        self.log.info(
            "Wrote %d row(s) x %d feature(s) to %s (%s)", len(frame), len(features), uri, content_hash
        )
        views = [
            feast_feature_view_asset(hook.store.project, p.name).uri for p in service.feature_view_projections
        ]
        facts = {
            "rows": len(frame),
            "features": features,
            "label": self.label_column,
            "feature_service": service.name,
        }
        self.record_lineage(
            inputs=[LineageDataset(view) for view in views],
            outputs=[LineageDataset(uri, version=content_hash, facts=facts)],
        )
        return {
            "uri": uri,
            "rows": len(frame),
            "features": features,
            "label": self.label_column,
            "content_hash": content_hash,
            "feature_service": service.name,
            "rows_missing_features": int(incomplete.sum()),
        }

    def _entity_rows(self, hook: FeastHook, service: Any) -> tuple[pd.DataFrame, list[str]]:
        """The entity rows in the window, checked for every column the service needs; and the join keys."""
        import pandas as pd

        if self.entity_conn_id:
            frame = _read_sql(self.entity_conn_id, self.entity_source)
        else:
            frame = read_dataframe(self.entity_source)
        views = {fv.name: fv for fv in hook.store.list_feature_views()}
        odfvs = {v.name: v for v in hook.store.list_on_demand_feature_views()}
        keys, request = [], []
        for projection in service.feature_view_projections:
            if projection.name in views:
                keys += [
                    projection.join_key_map.get(c.name, c.name) for c in views[projection.name].entity_columns
                ]
            elif projection.name in odfvs:
                request += [
                    f.name for s in odfvs[projection.name].source_request_sources.values() for f in s.schema
                ]
        keys = list(dict.fromkeys(keys))
        needed = [*keys, "event_timestamp", *dict.fromkeys(request)]
        needed += [self.label_column] if self.label_column else []
        missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
        if missing:
            raise MLPlatConfigError(
                f"entity rows {self.entity_source!r} lack column(s) {missing} that feature service "
                f"{service.name!r} needs; columns found: {list(frame.columns)}"
            )
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        if self.start is not None:
            frame = frame[frame["event_timestamp"] >= as_utc("start", self.start)]
        if self.end is not None:
            frame = frame[frame["event_timestamp"] < as_utc("end", self.end)]
        if frame.empty:
            raise MLPlatValidationFailed(
                f"no entity rows in {self.entity_source!r} between {self.start} and {self.end}: nothing to train on"
            )
        order = [*keys, "event_timestamp"]
        return frame[order + [c for c in frame.columns if c not in order]].reset_index(drop=True), keys


def _attach(context: Context, metadata: Metadata) -> None:
    """Attach Metadata to this task's event of an outlet Asset (what yielding it from a @task does)."""
    context["outlet_events"][metadata.asset].extra.update(metadata.extra)


def _read_sql(conn_id: str, sql: str) -> pd.DataFrame:
    """Run a query on an Airflow connection: through its provider's SQL hook, or SQLAlchemy from its URI."""
    import pandas as pd
    import sqlalchemy
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    try:
        hook = conn.get_hook()
    except Exception:  # no provider hook for this connection type: use its URI
        hook = None
    if hasattr(hook, "get_df"):
        return hook.get_df(sql, df_type="pandas")
    uri = conn.get_uri()
    for scheme in ("postgres://", "postgresql://"):  # the driver this project ships
        uri = uri.replace(scheme, "postgresql+psycopg2://", 1) if uri.startswith(scheme) else uri
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            return pd.read_sql(sqlalchemy.text(sql), connection)
    finally:
        engine.dispose()
