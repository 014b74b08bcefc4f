"""A Feast online store whose next write batch fails on demand (importable by Ray workers too)."""

from __future__ import annotations

import os
from typing import Literal

from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig


class FlakySqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """SQLite online store config plus the fault to inject."""

    type: Literal["tests.feast_faults.FlakySqliteOnlineStore"] = "tests.feast_faults.FlakySqliteOnlineStore"
    #: while this file exists, the next write batch fails (once: the write removes it, in any process)
    fail_flag: str
    #: "raise" a connection error, or "drop" the batch silently (a write that loses its rows)
    mode: Literal["raise", "drop"] = "raise"
    #: write batches of this store instance that succeed before the flag is looked at
    fail_after: int = 0


class FlakySqliteOnlineStore(SqliteOnlineStore):
    """The SQLite online store, except for the one batch the fail flag selects."""

    def online_write_batch(self, config, table, data, progress):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches <= config.online_store.fail_after:
            return super().online_write_batch(config, table, data, progress)
        try:
            os.unlink(config.online_store.fail_flag)
        except FileNotFoundError:
            return super().online_write_batch(config, table, data, progress)
        if config.online_store.mode == "raise":
            raise ConnectionError(
                f"injected: lost the connection while writing {len(data)} rows of {table.name}"
            )
        return None
