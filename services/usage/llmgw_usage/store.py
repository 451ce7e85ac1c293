"""ClickHouse adapter. chDB is synchronous and its data directory belongs to
one process, so every call (connect, migrate, insert, query, close) runs on
ONE dedicated worker thread; the event loop never blocks on ClickHouse."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from llmgw_common.clickhouse_conn import connect_clickhouse
from llmgw_common.messages import HistoryRow, UsageEvent, UsageHistoryQuery

from . import domain
from .schema import apply_migrations

log = logging.getLogger(__name__)


class ClickHouseStore:
    def __init__(self, url: str, chdb_path: Path | str):
        self._url = url
        self._chdb_path = Path(chdb_path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-clickhouse")
        self._client = None

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _require(self):
        if self._client is None:
            raise RuntimeError("ClickHouse store is not open")
        return self._client

    # ---- lifecycle ----------------------------------------------------------

    async def open(self) -> list[int]:
        """Connect and apply pending migrations; returns the migration versions applied now."""
        def _open() -> list[int]:
            client = connect_clickhouse(self._url, self._chdb_path)
            try:
                applied = apply_migrations(client)
            except Exception:
                client.close()
                raise
            self._client = client
            return applied

        applied = await self._run(_open)
        if applied:
            log.info("clickhouse migrations applied: %s", ", ".join(f"{v:04d}" for v in applied))
        return applied

    async def close(self) -> None:
        def _close() -> None:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None

        try:
            await self._run(_close)
        finally:
            # the worker thread must be gone before the process (or the next test) opens chDB again
            await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    # ---- writes and reads ---------------------------------------------------

    async def insert_events(self, events: Sequence[UsageEvent]) -> int:
        if not events:
            return 0
        rows = [domain.event_to_row(ev) for ev in events]

        def _insert() -> None:
            self._require().insert(domain.TABLE, rows, column_names=list(domain.COLUMNS))

        await self._run(_insert)
        return len(rows)

    async def history(self, q: UsageHistoryQuery) -> list[HistoryRow]:
        sql, params = domain.history_sql(q)

        def _query():
            return self._require().query(sql, parameters=params).result_rows

        return domain.history_rows(await self._run(_query))

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Read-only helper (tests, diagnostics) on the same worker thread."""
        def _query():
            return self._require().query(sql, parameters=parameters or {}).result_rows

        return await self._run(_query)
