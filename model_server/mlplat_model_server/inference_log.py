"""
Inference log: every served row (features, prediction, model version, timestamp), read by time window.

The store is one location string, the same in the model server (``MLPLAT_SERVING_INFERENCE_LOG``)
and in the ``kserve`` connection's ``inference_log`` extra:

- a folder (the default): JSON lines, ``<folder>/<deployment>/<YYYY-MM-DD>.jsonl``;
- a PostgreSQL URL (``postgresql://user:password@host:5432/db``, or ``postgresql+psycopg2://...``):
  the table :data:`TABLE`, created when first written, indexed on ``(deployment, ts)``. Features and
  prediction are ``json`` (not ``jsonb``), which keeps the request's key order: the reader returns the
  same columns in the same order as the files store.

Writers flush a batch at a time (one ``write`` per file, one transaction per flush in PostgreSQL), so a
reader never sees half a batch; a batch that cannot be written stays queued for the next flush.
The password of a URL never appears in messages (:func:`masked`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: columns of every record besides the request's features (flattened into columns on read)
RECORD_FIELDS = (
    "timestamp",
    "deployment",
    "model_name",
    "model_version",
    "request_id",
    "status_code",
    "prediction",
)
#: the PostgreSQL store's table
TABLE = "mlplat_inference_log"


def is_postgres(location: Path | str) -> bool:
    """
    Whether a location is a PostgreSQL URL (else a folder).

    :param location: inference log folder or ``postgresql[+driver]://`` URL.
    """
    return str(location).startswith(("postgresql://", "postgresql+"))


def masked(location: Path | str) -> str:
    """
    The location to show in messages: a URL with its password replaced by ``***``.

    :param location: inference log folder or PostgreSQL URL.
    """
    if not is_postgres(location):
        return str(location)
    from sqlalchemy.engine import make_url

    return make_url(str(location)).render_as_string(hide_password=True)


def log_file(root: Path | str, deployment: str, day: str) -> Path:
    """
    The file holding one deployment's records of one UTC day: ``<root>/<deployment>/<YYYY-MM-DD>.jsonl``.

    :param root: inference log folder.
    :param deployment: deployment (InferenceService) name.
    :param day: UTC date, ``YYYY-MM-DD``.
    """
    return Path(root) / deployment / f"{day}.jsonl"


class InferenceLogWriter:
    """
    Appends records to the files store from a background thread in batches, so serving never waits
    on the disk; :class:`PostgresInferenceLogWriter` writes to PostgreSQL instead.

    Each flush writes whole lines with one ``write`` per file, so a reader never sees half a
    batch; :meth:`close` flushes what is queued (call it after the HTTP server drained).

    :param location: inference log folder.
    :param flush_interval: seconds between flushes.
    """

    def __init__(self, location: Path | str, flush_interval: float = 0.5) -> None:
        self.location = location
        self.flush_interval = flush_interval
        self._queue: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self.written = 0

    def start(self) -> InferenceLogWriter:
        """Start the flushing thread."""
        self._thread.start()
        return self

    def append(self, records: list[dict[str, Any]]) -> None:
        """
        Queue records (cheap: no I/O, no encoding on the caller's thread).

        :param records: one dict per served row, with the keys of :data:`RECORD_FIELDS` and ``features``.
        """
        self._queue.extend(records)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()
        self.flush()

    def flush(self) -> int:
        """
        Write everything queued so far; return how many records were written. What cannot be
        written (the store is down) goes back to the head of the queue for the next flush.
        """
        # only whole append() calls are queued, so the first len() records are whole batches
        records = [self._queue.popleft() for _ in range(len(self._queue))]
        units = self._units(records)
        count = 0
        for done, unit in enumerate(units):
            try:
                self._write(unit)
            except Exception as err:
                unwritten = [record for rest in units[done:] for record in rest]
                self._queue.extendleft(reversed(unwritten))
                log.warning(
                    "inference log %s: %d record(s) not written, kept for the next flush: %s",
                    masked(self.location),
                    len(unwritten),
                    getattr(err, "orig", None) or err,  # SQLAlchemy's message would add the SQL
                )
                break
            count += len(unit)
        self.written += count
        return count

    def _units(self, records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The records grouped in what one :meth:`_write` writes all or nothing: one file each."""
        files: dict[Path, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            files[log_file(self.location, record["deployment"], record["timestamp"][:10])].append(record)
        return list(files.values())

    def _write(self, records: list[dict[str, Any]]) -> None:
        """Append records of one deployment and day to their file, with one ``write``."""
        # orjson: encoding a batch holds the GIL, and serving threads wait for it; it is ~10x json's speed
        import orjson

        path = log_file(self.location, records[0]["deployment"], records[0]["timestamp"][:10])
        lines = [orjson.dumps(r, default=str, option=orjson.OPT_SERIALIZE_NUMPY) for r in records]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(b"\n".join(lines) + b"\n")

    def close(self) -> None:
        """Stop the thread after a last flush."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self.flush()


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _table() -> Any:
    """The PostgreSQL store's table (SQLAlchemy Core), with its ``(deployment, ts)`` index."""
    import sqlalchemy as sa

    return sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deployment", sa.Text, nullable=False),
        sa.Column("model_name", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("request_id", sa.Text),
        sa.Column("status_code", sa.Integer),
        sa.Column("prediction", sa.JSON),
        sa.Column("features", sa.JSON),
        sa.Index(f"{TABLE}_deployment_ts", "deployment", "ts"),
    )


def _engine(location: str) -> Any:
    import sqlalchemy as sa

    url = sa.make_url(location)
    if url.drivername == "postgresql":  # SQLAlchemy 2.1's default driver is psycopg 3; psycopg2 is installed
        url = url.set(drivername="postgresql+psycopg2")
    # hide_parameters: served features stay out of error messages; pre-ping: survive a restart
    return sa.create_engine(url, json_serializer=_json, hide_parameters=True, pool_pre_ping=True)


class PostgresInferenceLogWriter(InferenceLogWriter):
    """
    :class:`InferenceLogWriter` writing each flush as one multi-row ``INSERT`` in one transaction,
    so a reader sees whole batches only; the table is created when missing.

    :param location: ``postgresql[+driver]://`` URL.
    :param flush_interval: seconds between flushes.
    """

    def __init__(self, location: str, flush_interval: float = 0.5) -> None:
        super().__init__(location, flush_interval)
        self._engine = _engine(location)
        self._table = _table()

    def _units(self, records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return [records] if records else []

    def _write(self, records: list[dict[str, Any]]) -> None:
        rows = [
            {
                **{field: record[field] for field in RECORD_FIELDS if field != "timestamp"},
                "ts": datetime.fromisoformat(record["timestamp"]),
                "features": record.get("features"),
            }
            for record in records
        ]
        with self._engine.begin() as conn:
            # checked every flush (one catalog query): the database may have been recreated
            self._table.create(conn, checkfirst=True)
            conn.execute(self._table.insert(), rows)

    def close(self) -> None:
        """Stop the thread after a last flush; close the connections."""
        super().close()
        self._engine.dispose()


def inference_log_writer(location: Path | str, flush_interval: float = 0.5) -> InferenceLogWriter:
    """
    The writer (not started) of a location: :class:`PostgresInferenceLogWriter` for a PostgreSQL URL,
    else :class:`InferenceLogWriter` (a folder).

    :param location: inference log folder or ``postgresql[+driver]://`` URL.
    :param flush_interval: seconds between flushes.
    """
    if is_postgres(location):
        return PostgresInferenceLogWriter(str(location), flush_interval)
    return InferenceLogWriter(location, flush_interval)


def _parse(data: bytes) -> pd.DataFrame | None:
    """JSON lines as a DataFrame (features flattened into columns); None when there is no line."""
    import pandas as pd

    if not data:
        return None
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        # Arrow's reader parses in C++ (~5x the json module plus a DataFrame built from dicts)
        # timestamps parsed by Arrow too (ISO 8601, any offset, with or without fractions)
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=1 << 22),
            parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([("timestamp", pa.timestamp("us", "UTC"))])
            ),
        )
    except pa.ArrowInvalid:
        # a field changed type between lines (e.g. a feature sent as a number, then as text): per line
        import orjson

        rows = []
        for line in data.splitlines():
            record = orjson.loads(line)
            rows.append({**(record.pop("features", None) or {}), **record})
        return pd.DataFrame(rows)
    fields = table.column_names
    if "features" in fields and pa.types.is_struct(table.schema.field("features").type):
        table = table.flatten()
    frame = table.to_pandas()
    features = {c: c.removeprefix("features.") for c in frame.columns if c.startswith("features.")}
    order = [*features, *(c for c in fields if c != "features")]
    return frame[order].rename(columns=features)


def _read_files(
    root: Path | str, deployment: str, start: datetime | None, end: datetime | None
) -> list[bytes]:
    """The whole lines of the day files overlapping the window, one bytes per file."""
    folder = Path(root) / deployment
    first, last = (
        (start.astimezone(UTC).date().isoformat() if start else ""),
        (end.astimezone(UTC).date().isoformat() if end else "9999"),
    )
    days = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        if first <= path.stem <= last:
            data = path.read_bytes()
            days.append(data[: data.rfind(b"\n") + 1])  # a line still being written is left for the next read
    return days


def _read_postgres(url: str, deployment: str, start: datetime | None, end: datetime | None) -> list[bytes]:
    """The records of the window as the files store's JSON lines (same keys, same order), in one bytes."""
    import sqlalchemy as sa

    table = _table()
    c = table.c
    line = sa.func.json_build_object(
        *("timestamp", c.ts),
        *(item for field in RECORD_FIELDS[1:] for item in (field, c[field])),
        *("features", c.features),
    )
    query = sa.select(sa.cast(line, sa.Text)).where(c.deployment == deployment).order_by(c.id)
    if start is not None:
        query = query.where(c.ts >= start)
    if end is not None:
        query = query.where(c.ts < end)
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(TABLE):
                return []
            conn.exec_driver_sql("SET TIME ZONE 'UTC'")
            lines = conn.execute(query).scalars().all()
    finally:
        engine.dispose()
    return ["".join(f"{line}\n" for line in lines).encode()]


def read_inference_log(
    location: Path | str,
    deployment: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """
    The records of one deployment in ``[start, end)`` as a DataFrame: one column per feature, then
    :data:`RECORD_FIELDS`, ``timestamp`` in UTC. Only whole batches are read: a line still being
    written (no trailing newline yet) or a PostgreSQL transaction not yet committed is left for the next read.

    :param location: inference log folder or ``postgresql[+driver]://`` URL.
    :param deployment: deployment (InferenceService) name.
    :param start: first timestamp included (timezone-aware; default: the beginning).
    :param end: first timestamp excluded (timezone-aware; default: now and later).
    """
    import pandas as pd

    read = _read_postgres if is_postgres(location) else _read_files
    frames = [
        frame for data in read(str(location), deployment, start, end) if (frame := _parse(data)) is not None
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_FIELDS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    if start is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["timestamp"] < pd.Timestamp(end)]
    return frame.reset_index(drop=True)
