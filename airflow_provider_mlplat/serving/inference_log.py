"""Inference log: every served row (features, prediction, model version, timestamp) as JSON lines."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

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
    Appends records from a background thread in batches, so serving never waits on the disk.

    Each flush writes whole lines with one ``write`` per file, so a reader never sees half a
    batch; :meth:`close` flushes what is queued (call it after the HTTP server drained).

    :param root: inference log folder.
    :param flush_interval: seconds between flushes.
    """

    def __init__(self, root: Path | str, flush_interval: float = 0.5) -> None:
        self.root = Path(root)
        self.flush_interval = flush_interval
        self._queue: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self.written = 0

    def start(self) -> InferenceLogWriter:
        """Start the flushing thread."""
        self.root.mkdir(parents=True, exist_ok=True)
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
        """Write everything queued so far; return how many records were written."""
        # orjson: encoding a batch holds the GIL, and serving threads wait for it; it is ~10x json's speed
        import orjson

        batch: dict[Path, list[bytes]] = defaultdict(list)
        count = 0
        while self._queue:
            record = self._queue.popleft()
            batch[log_file(self.root, record["deployment"], record["timestamp"][:10])].append(
                orjson.dumps(record, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
            )
            count += 1
        for path, lines in batch.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:
                f.write(b"\n".join(lines) + b"\n")
        self.written += count
        return count

    def close(self) -> None:
        """Stop the thread after a last flush."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self.flush()


def _read_day(path: Path) -> pd.DataFrame | None:
    """One log file as a DataFrame (features flattened into columns); None when it holds no whole line."""
    import pandas as pd

    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # a line still being written is left for the next read
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


def read_inference_log(
    root: Path | str,
    deployment: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """
    The records of one deployment in ``[start, end)`` as a DataFrame: one column per feature, then
    :data:`RECORD_FIELDS`. A line still being written (no trailing newline yet) is left for the next read.

    :param root: inference log folder.
    :param deployment: deployment (InferenceService) name.
    :param start: first timestamp included (timezone-aware; default: the beginning).
    :param end: first timestamp excluded (timezone-aware; default: now and later).
    """
    import pandas as pd

    folder = Path(root) / deployment
    first, last = (
        (start.astimezone(UTC).date().isoformat() if start else ""),
        (end.astimezone(UTC).date().isoformat() if end else "9999"),
    )
    days = [
        _read_day(path)
        for path in (sorted(folder.glob("*.jsonl")) if folder.is_dir() else [])
        if first <= path.stem <= last
    ]
    days = [day for day in days if day is not None]
    frame = pd.concat(days, ignore_index=True) if days else pd.DataFrame(columns=list(RECORD_FIELDS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    if start is not None:
        frame = frame[frame["timestamp"] >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame["timestamp"] < pd.Timestamp(end)]
    return frame.reset_index(drop=True)
