"""ClickHouse adapter. chDB is synchronous and its data directory belongs to
one process, so every call (connect, migrate, insert, query, close) runs on
ONE dedicated worker thread; the event loop never blocks on ClickHouse.

chDB does not reliably refuse a second process on the same directory (its own
lock file only appears once tables hold data), so the store takes an
exclusive ``flock`` on ``<dir>.lock`` while it is open, and a second opener
(``llmgw replay`` while the service runs, a second service) gets a clear
``StoreBusyError`` instead of two engines writing one directory. (With a
ClickHouse server the lock guards the insert journal of the state directory:
give every replica its own ``LLMGW_STATE_DIR``.)

Events are inserted as JSON rows (JSONEachRow, see ``domain.raw_line``):
ClickHouse parses them in C++, so no row is built or serialized in Python.

The insert journal (``<dir>.journal/<token>.ndjson``, the insert's body): a
materialized view is not atomic with its source table, so a process killed
during an insert can leave the events stored but not their rollup rows. Every
insert of events is first written to the journal, carries its token as
``insert_deduplication_token`` (and in the ``insert_token`` column), and its
journal file is removed once the insert returned. A journal file found later is
an insert that may have been cut short: ``ClickHouseProjection.recover``
repeats it with the same token when any of its rows landed (ClickHouse then
writes only the blocks some table is missing) and forgets it when none did
(its events were never acknowledged, so they come back from the stream).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from pydantic import BaseModel, TypeAdapter

from llmgw_common.clickhouse_conn import connect_clickhouse
from llmgw_common.files import write_atomically
from llmgw_common.messages import (
    DayTotals,
    HistoryRow,
    RequestLogRow,
    UsageEvent,
    UsageHistoryQuery,
    UsageRequestsQuery,
    UsageStats,
    UsageStatsQuery,
)

from . import domain, queries
from .domain import EventRow
from .schema import SchemaStatus, apply_migrations, schema_status

log = logging.getLogger(__name__)


# every insert of events: retryable as a whole (same token: ClickHouse skips the blocks a table holds)
TOKEN_COLUMN = "insert_token"
JOURNAL_SUFFIX = ".ndjson"
# a journal written before inserts were JSON rows: a JSON array of UsageEvents
_OLD_JOURNAL = TypeAdapter(list[UsageEvent])


class _Stamp(BaseModel):
    """What recovery reads of a journaled row: where to look for it."""

    id: str
    ts: datetime

    @property
    def ts_s(self) -> float:
        return domain.epoch_s(self.ts)



def _insert_settings(token: str) -> dict:
    return dict(queries.INSERT_SETTINGS, **domain.INSERT_FORMAT_SETTINGS, insert_deduplication_token=token,
                deduplicate_blocks_in_dependent_materialized_views=1)


def insert_body(token: str, lines: Iterable[bytes]) -> bytes:
    """The JSONEachRow body of one insert: each row (a JSON object) with the insert's token added."""
    prefix = b'{"%s":"%s",' % (TOKEN_COLUMN.encode(), token.encode())
    return b"\n".join(prefix + line[1:] for line in lines)


class InsertRejected(RuntimeError):
    """ClickHouse refused an insert's data (a value it cannot parse) and stored none of it."""


def is_unreachable(exc: BaseException) -> bool:
    """An error about reaching ClickHouse (a server down, the network), not about the data."""
    return isinstance(exc, OperationalError)


def _is_rejection(exc: Exception) -> bool:
    """An error about the data, not about reaching ClickHouse (those are ``OperationalError``)."""
    return isinstance(exc, DatabaseError) and not isinstance(exc, OperationalError)


@dataclass(frozen=True)
class JournaledInsert:
    path: Path
    token: str
    body: bytes
    stamps: list[_Stamp]


def _read_journal(path: Path) -> JournaledInsert:
    data = path.read_bytes()
    if path.suffix == ".json":
        events = _OLD_JOURNAL.validate_json(data)
        data = insert_body(path.stem, (domain.event_line(ev) for ev in events))
    stamps = [_Stamp.model_validate_json(line) for line in data.splitlines() if line.strip()]
    return JournaledInsert(path, path.stem, data, stamps)


class ClickHouseUnavailable(RuntimeError):
    """The store is not attached (yet): ClickHouse unreachable, its schema behind, the chDB directory busy.
    The message says which; the usage service answers queries with it and leaves batches for redelivery."""


class SchemaBehind(ClickHouseUnavailable):
    """ClickHouse answers, but the migrations this code needs are not all applied (``llmgw migrate``)."""

    def __init__(self, status: SchemaStatus):
        super().__init__(status.describe())
        self.status = status


class StoreBusyError(RuntimeError):
    """The chDB directory is open in another process (or another store of this one)."""


def _lock_dir(path: Path) -> int:
    """An exclusive, non-blocking flock on ``<path>.lock``; returns the open file descriptor."""
    lock_path = path.parent / f"{path.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StoreBusyError(f"the ClickHouse state in {path} (chDB data, insert journal) is in use by "
                                 f"another process (pid {holder}); only one process may open it at a time "
                                 "(usage replicas each need their own LLMGW_STATE_DIR)") from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class ClickHouseStore:
    def __init__(self, url: str, chdb_path: Path | str):
        self._url = url
        self._chdb_path = Path(chdb_path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-clickhouse")
        self._client = None
        self._identity: str | None = None
        self._lock_fd: int | None = None
        self.unavailable = "ClickHouse store is not open"  # why, while it is not (the queries' answer)
        self.journal_dir = self._chdb_path.parent / f"{self._chdb_path.name}.journal"

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def _require(self):
        if self._client is None:
            raise ClickHouseUnavailable(self.unavailable)
        return self._client

    @property
    def is_open(self) -> bool:
        return self._client is not None

    # ---- lifecycle ----------------------------------------------------------

    async def open(self) -> list[int]:
        """Connect and apply pending migrations; returns the migration versions applied now."""
        def _open() -> list[int]:
            self._lock_fd = _lock_dir(self._chdb_path)  # chDB data, and the insert journal in any case
            try:
                client = connect_clickhouse(self._url, self._chdb_path)
                try:
                    applied = apply_migrations(client)
                except Exception:
                    client.close()
                    raise
            except Exception:
                self._unlock()
                raise
            self._client = client
            return applied

        applied = await self._run(_open)
        if applied:
            log.info("clickhouse migrations applied: %s", ", ".join(f"{v:04d}" for v in applied))
        return applied

    async def attach(self) -> SchemaStatus:
        """Connect without any DDL, and stay connected only when every migration this code needs is
        applied (the usage service: ``llmgw migrate`` applies them). Raises ``SchemaBehind`` otherwise, with
        the connection closed and the directory lock released: with chDB, ``llmgw migrate`` needs them."""
        def _attach() -> SchemaStatus:
            self._lock_fd = _lock_dir(self._chdb_path)
            client = None
            try:
                client = connect_clickhouse(self._url, self._chdb_path)
                status = schema_status(client)
                if not status.current:
                    raise SchemaBehind(status)
            except BaseException:
                if client is not None:
                    client.close()
                self._unlock()
                raise
            self._client = client
            return status

        return await self._run(_attach)

    async def detach(self) -> None:
        """Close the connection and release the directory lock, ready to ``attach`` again."""
        def _detach() -> None:
            try:
                if self._client is not None:
                    self._client.close()
            finally:
                self._client = None
                self._unlock()

        await self._run(_detach)

    async def ping(self) -> None:
        """One trivial query on the worker thread (the health check: ClickHouse answers)."""
        await self._run(lambda: self._require().query("SELECT 1"))

    async def close(self) -> None:
        def _close() -> None:
            try:
                if self._client is not None:
                    try:
                        self._client.close()
                    finally:
                        self._client = None
            finally:
                self._unlock()

        try:
            await self._run(_close)
        finally:
            # the worker thread must be gone before the process (or the next test) opens chDB again
            await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    # ---- writes (only through ClickHouseProjection: every id at most once) ---

    @property
    def exclusive_owner(self) -> str | None:
        """A claim owner name only this store can hold: chDB's data directory is locked by one process
        (and used from one thread), so claims left by a crashed predecessor on the same directory are
        ours to take back at once. None for a ClickHouse server, which other replicas share."""
        if self._url:
            return None
        return f"chdb:{socket.gethostname()}:{self._chdb_path.resolve()}"

    async def identity(self) -> str:
        """What names this ClickHouse table across processes: the UUID of ``usage_events``
        (the database name where the engine gives no UUID)."""
        if self._identity is None:
            def _query() -> str:
                client = self._require()
                rows = client.query("SELECT toString(uuid), currentDatabase() FROM system.tables"
                                    " WHERE database = currentDatabase() AND name = {t:String}",
                                    parameters={"t": domain.TABLE}).result_rows
                if not rows:
                    raise RuntimeError(f"table {domain.TABLE} does not exist")
                table_uuid, database = rows[0]
                return table_uuid if table_uuid.strip("0-") else f"db-{database}"

            self._identity = await self._run(_query)
        return self._identity

    def _existing(self, rows: Sequence[EventRow]) -> set[str]:
        """Ids of ``rows`` that usage_events already holds (worker thread)."""
        if not rows:
            return set()
        sql = queries.existing_ids_sql(rows)
        return {r[0] for r in self._require().query(sql, settings=queries.EXISTING_IDS_SETTINGS).result_rows}

    async def existing_ids(self, rows: Sequence[EventRow]) -> set[str]:
        return await self._run(self._existing, rows)

    async def insert_new(self, rows: Sequence[EventRow]) -> int:
        """Insert the events usage_events does not hold yet; returns how many were inserted.

        The check and the insert are one job on the ClickHouse thread, so nothing
        else this process inserts can come between them (``ClickHouseProjection``
        keeps other processes out with claims). The insert is journaled and
        carries a fresh token (see the module doc). Bodies go first: if the
        events' insert fails, both are repeated on the redelivery
        (request_bodies collapses repeated rows; it has no views).
        Raises ``InsertRejected`` when ClickHouse refused the events' JSON.
        """
        if not rows:
            return 0

        def _job() -> int:
            existing = self._existing(rows)
            new = [row for row in rows if row.id not in existing]
            if new:
                bodies = domain.body_rows(row.event for row in new)
                if bodies:
                    self._require().insert(queries.BODIES, bodies, column_names=list(queries.BODY_COLUMNS),
                                           settings=queries.INSERT_SETTINGS)
                self._insert(new)
            return len(new)

        return await self._run(_job)

    def _insert(self, rows: Sequence[EventRow]) -> None:
        """Journal, insert with a fresh token, forget (worker thread)."""
        token = uuid.uuid4().hex
        body = insert_body(token, (row.line for row in rows))
        path = self.journal_dir / f"{token}{JOURNAL_SUFFIX}"
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(path, body, fsync=False)  # complete or absent; ClickHouse holds it once inserted
        try:
            self._insert_body(token, body)
        except Exception as exc:
            if _is_rejection(exc) and not self._landed(token, rows):
                path.unlink()  # nothing of it is stored: nothing to finish after a restart
                raise InsertRejected(f"ClickHouse refused the events: {str(exc)[:500]}") from exc
            raise
        path.unlink()

    def _insert_body(self, token: str, body: bytes) -> None:
        """One insert of usage_events rows (``insert_body``) with its token (worker thread)."""
        self._require().raw_insert(domain.TABLE, None, body, settings=_insert_settings(token), fmt=domain.INSERT_FORMAT)

    def _landed(self, token: str, stamps: Sequence[queries.Stamped]) -> bool:
        """Whether any row of the insert with ``token`` is in usage_events (worker thread)."""
        sql = queries.token_rows_sql(token, stamps)
        return self._require().query(sql).result_rows[0][0] > 0

    async def pending_inserts(self) -> list[JournaledInsert]:
        """Journaled inserts that never returned (a crash, a failure), oldest first."""
        def _read() -> list[JournaledInsert]:
            if not self.journal_dir.is_dir():
                return []
            for tmp in self.journal_dir.glob("*.tmp"):
                tmp.unlink()  # cut short before the insert began
            files = [p for p in self.journal_dir.iterdir() if p.suffix in (JOURNAL_SUFFIX, ".json")]
            return [_read_journal(p) for p in sorted(files, key=lambda p: p.stat().st_mtime)]

        return await self._run(_read)

    async def token_landed(self, insert: JournaledInsert) -> bool:
        """Whether any row of a journaled insert is in usage_events."""
        return await self._run(self._landed, insert.token, insert.stamps)

    async def repeat_insert(self, insert: JournaledInsert) -> None:
        """A journaled insert again, same body and token: every table writes only the blocks it is missing."""
        def _repeat() -> None:
            self._insert_body(insert.token, insert.body)
            insert.path.unlink(missing_ok=True)

        await self._run(_repeat)

    async def forget_insert(self, insert: JournaledInsert) -> None:
        await self._run(insert.path.unlink, missing_ok=True)

    async def history(self, q: UsageHistoryQuery) -> tuple[list[HistoryRow], list[HistoryRow], queries.HistoryPlan]:
        """(rows per bucket, totals per group over the whole range, the plan: table, dimensions, cursor) of
        the page ``q.cursor`` asks for: totals only in the totals phase (the first page, usually)."""
        plan = queries.history_plan(q)
        sql, params = plan.rows_sql()

        def _query():
            client = self._require()
            totals = []
            if plan.totals_wanted:
                totals = client.query(plan.top_sql, parameters=plan.params).result_rows
                if not totals and not plan.cursor.totals_offset:
                    return [], []  # no group at all: no rows either
            return client.query(sql, parameters=params).result_rows, totals

        rows, totals = await self._run(_query)
        return queries.history_rows(rows, plan), queries.history_rows(totals, plan), plan

    async def requests(self, q: UsageRequestsQuery) -> tuple[list[RequestLogRow], str | None]:
        """One page of the request log, newest first, and the cursor of the next page (None: last page)."""
        sql, params = queries.requests_sql(q)

        def _query():
            client = self._require()
            rows = client.query(sql, parameters=params).result_rows
            bodies = {}
            if q.include_bodies and rows:
                bsql, bparams = queries.bodies_sql([r[1] for r in rows[: q.limit]], [r[0] for r in rows[: q.limit]])
                bodies = {r[0]: (r[1], r[2]) for r in client.query(bsql, parameters=bparams).result_rows}
            return rows, bodies

        rows, bodies = await self._run(_query)
        return queries.request_rows(rows, q.limit, bodies, q.include_bodies)

    async def stats(self, q: UsageStatsQuery, now: datetime) -> UsageStats:
        """Errors, 429s and latency percentiles per provider and per model over ``q``'s range."""
        since, until = queries.stats_range(q, now)
        counts_sql, detail_sql, params = queries.stats_sql(since, until)

        def _query():
            client = self._require()
            return (client.query(counts_sql, parameters=params).result_rows,
                    client.query(detail_sql, parameters=params).result_rows)

        counts, detail = await self._run(_query)
        rows, truncated = queries.stats_rows(counts, detail, q.limit)
        return UsageStats(since=since, until=until, rows=rows, truncated=truncated)

    async def key_days(self, key_id: str, start_s: int, end_s: int, tz: str) -> list[DayTotals]:
        """One key's totals per day from ``start_s`` to ``end_s`` (a calendar month in ``tz``)."""
        sql, params = queries.key_days_sql(key_id, start_s, end_s, tz)
        rows = await self.query(sql, params)
        return queries.key_days(rows, start_s, end_s, tz)

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        """Read-only helper (tests, diagnostics) on the same worker thread."""
        def _query():
            return self._require().query(sql, parameters=parameters or {}).result_rows

        return await self._run(_query)
