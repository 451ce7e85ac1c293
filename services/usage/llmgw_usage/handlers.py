"""The ``usage`` micro-service endpoints: live windows, history, request log, dead letters, replay.

Typed handlers (a query message in, a reply out) run by ``llmgw_common.service``: an undecodable query
gets 400 there; a handler refuses with ``ServiceError`` (400 bad query, 403 disabled, 503 ClickHouse not
attached yet: unreachable, or its schema behind, 500 failure) and its
text is short and never carries a traceback.

Query replies whose size depends on the data (request log, history, current
windows, dead letters) are cut to the NATS max payload and carry a
``next_cursor`` for the rest (``queries.page_requests`` / ``page_history``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable

from llmgw_common import subjects
from llmgw_common.messages import (
    KeyUsage,
    KeyUsageQuery,
    UsageCurrent,
    UsageCurrentQuery,
    UsageDeadLetters,
    UsageDeadLettersQuery,
    UsageHistory,
    UsageHistoryQuery,
    UsageReplayBatch,
    UsageReplayResult,
    UsageRequests,
    UsageRequestsQuery,
    UsageSimulate,
    UsageSimulated,
    UsageStats,
    UsageStatsQuery,
    WindowTotals,
    utcnow,
)
from llmgw_common.service import ServiceError
from llmgw_common.windows import SCOPES_KEY, key_scope, month_key, month_of, nano_to_usd

from . import deadletter, domain, queries, simulate
from .projection import project_leaving_out_refused
from .queries import QueryError
from .store import ClickHouseUnavailable

log = logging.getLogger(__name__)

# scopes read from Redis at a time for a reply of the current windows
CURRENT_CHUNK = 500


class QueryHandlers:
    """The ``usage`` micro-service endpoints (registered by ``main.serve``)."""

    def __init__(self, store, redis, reader, projection=None, js=None, simulate_enabled: bool = False,
                 clock: Callable[[], float] = time.time, max_payload: Callable[[], int | None] | None = None,
                 budget_tz: Callable[[], str] = lambda: "UTC"):
        self._store = store
        self._redis = redis
        self._reader = reader
        self._projection = projection
        self._js = js
        self._simulate_enabled = simulate_enabled
        self._clock = clock
        self._max_payload = max_payload or (lambda: None)
        self._budget_tz = budget_tz  # keys' calendar months (config keys.budget_timezone, as the writer has it)

    def budget(self) -> int:
        """Bytes the rows of one reply may take (the NATS max payload this connection was told, less room)."""
        return queries.reply_budget(self._max_payload())

    async def current(self, q: UsageCurrentQuery) -> UsageCurrent:
        try:
            now = self._clock()
            scopes = sorted(await self._redis.smembers(SCOPES_KEY))
            if q.cursor is not None:
                scopes = [s for s in scopes if s > q.cursor]
            reply = UsageCurrent(at=utcnow())
            budget = self.budget()
            for start in range(0, len(scopes), CURRENT_CHUNK):
                chunk = scopes[start:start + CURRENT_CHUNK]
                part = domain.current_from_totals(await self._reader.read(chunk, int(now)), at=reply.at)
                n, used = queries.fit_count(part.scopes, budget)
                reply.scopes += part.scopes[:n]
                budget -= used
                if n < len(part.scopes):
                    if reply.scopes:
                        reply.next_cursor = chunk[n - 1] if n else scopes[start - 1]
                    else:  # never an empty page: one scope always goes (a scope is small)
                        reply.scopes, reply.next_cursor = part.scopes[:1], chunk[0]
                    break
        except Exception as exc:  # noqa: BLE001
            log.exception("usage current query failed")
            raise ServiceError(500, f"usage windows unavailable: {type(exc).__name__}") from None
        return reply

    async def key_usage(self, q: KeyUsageQuery) -> KeyUsage:
        """One key's live windows (scope ``k:<id>``) and this calendar month's totals (its month hash)."""
        try:
            now, tz = self._clock(), self._budget_tz()
            scope = key_scope(q.key_id)
            part = domain.current_from_totals(await self._reader.read([scope], int(now)), at=utcnow())
            label, start, end = month_of(now, tz)
            fields = await self._reader.read_month(month_key(scope, now, tz)[0])
            reply = KeyUsage(at=part.at, key_id=q.key_id, windows=part.scopes[0].windows if part.scopes else {},
                             month=label, timezone=tz, month_start=datetime.fromtimestamp(start, timezone.utc),
                             month_end=datetime.fromtimestamp(end, timezone.utc),
                             month_totals=WindowTotals(requests=fields.get("req", 0), tokens_in=fields.get("tin", 0),
                                                       tokens_out=fields.get("tout", 0),
                                                       cost_usd=nano_to_usd(fields.get("cost", 0))))
        except Exception as exc:  # noqa: BLE001
            log.exception("key usage query failed")
            raise ServiceError(500, f"key usage unavailable: {type(exc).__name__}") from None
        try:  # the month's days: ClickHouse being away must not hide the live windows
            reply.days = await self._store.key_days(q.key_id, start, end, tz)
        except Exception as exc:  # noqa: BLE001
            log.warning("key usage: days of the month unavailable: %s: %s", type(exc).__name__, str(exc)[:200])
        return reply

    async def stats(self, q: UsageStatsQuery) -> UsageStats:
        """Errors, 429s and latency percentiles per provider and model over a range (ClickHouse)."""
        try:
            reply = await self._store.stats(q, datetime.fromtimestamp(self._clock(), timezone.utc))
        except QueryError as exc:
            raise ServiceError(400, str(exc)) from None
        except ClickHouseUnavailable as exc:
            raise ServiceError(503, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("usage stats query failed")
            raise ServiceError(500, f"usage stats unavailable: {type(exc).__name__}") from None
        n, _ = queries.fit_count(reply.rows, self.budget())
        if n < len(reply.rows):
            reply.rows, reply.truncated = reply.rows[:n], True
        return reply

    async def history(self, q: UsageHistoryQuery) -> UsageHistory:
        try:
            rows, totals, plan = await self._store.history(q)
        except QueryError as exc:
            raise ServiceError(400, str(exc)) from None
        except ClickHouseUnavailable as exc:
            raise ServiceError(503, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("usage history query failed")
            raise ServiceError(500, f"usage history unavailable: {type(exc).__name__}") from None
        rows, totals, next_cursor = queries.page_history(rows, totals, plan, self.budget())
        return UsageHistory(rows=rows, totals=totals, source=plan.source, next_cursor=next_cursor)

    async def requests(self, q: UsageRequestsQuery) -> UsageRequests:
        try:
            rows, next_cursor = await self._store.requests(q)
        except QueryError as exc:
            raise ServiceError(400, str(exc)) from None
        except ClickHouseUnavailable as exc:
            raise ServiceError(503, str(exc)) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("request log query failed")
            raise ServiceError(500, f"request log unavailable: {type(exc).__name__}") from None
        rows, next_cursor = queries.page_requests(rows, next_cursor, self.budget())
        return UsageRequests(rows=rows, next_cursor=next_cursor)

    async def dead_letters(self, q: UsageDeadLettersQuery) -> UsageDeadLetters:
        """The dead letters, newest first, and their counts (``deadletter.list_dead``)."""
        try:
            reply = await deadletter.list_dead(self._js, q)
        except Exception as exc:  # noqa: BLE001
            log.exception("dead-letter query failed")
            raise ServiceError(500, f"dead letters unavailable: {type(exc).__name__}") from None
        n, _ = queries.fit_count(reply.rows, self.budget())
        if n < len(reply.rows):
            n = max(n, 1)  # a listed dead letter is small (its excerpt is bounded)
            reply.rows = reply.rows[:n]
            reply.next_cursor = reply.rows[-1].seq - 1 or None
        return reply

    async def replay(self, batch: UsageReplayBatch) -> UsageReplayResult:
        """Events from ``llmgw replay`` into ClickHouse, through the same guarded insert as the stream."""
        rows = [domain.event_row(ev) for ev in domain.dedupe(batch.events) if domain.refusal(ev) is None]
        try:
            res = await project_leaving_out_refused(self._projection, rows, batch.dry_run)
        except ClickHouseUnavailable as exc:
            raise ServiceError(503, f"replay batch not stored: {exc}") from None
        except Exception as exc:  # noqa: BLE001
            log.exception("replay batch failed")
            raise ServiceError(500, f"replay batch not stored: {type(exc).__name__}: {str(exc)[:200]}") from None
        return UsageReplayResult(received=len(batch.events), inserted=res.inserted, already=res.already,
                                 busy=sorted(res.busy))

    async def simulate(self, q: UsageSimulate) -> UsageSimulated:
        """Dev only: synthetic events published to the stream, so they take the real path."""
        if not self._simulate_enabled:
            raise ServiceError(403, "simulate is a dev tool and is off: start the usage service with "
                                    "LLMGW_DEV_SIMULATE=1 to enable it")
        events = simulate.synthetic_events(q, utcnow())
        try:
            acks = [await self._js.publish_async(subjects.usage_event_subject(ev.provider or "none"), ev.encode(),
                                                 headers={"Nats-Msg-Id": ev.id}) for ev in events]
            await asyncio.wait_for(asyncio.gather(*acks), 30)
        except Exception as exc:  # noqa: BLE001
            log.warning("simulate: publishing failed: %s", exc)
            raise ServiceError(500, f"publishing synthetic events failed: {type(exc).__name__}") from None
        log.info("simulate: published %d synthetic usage events", len(events))
        return UsageSimulated(published=len(events), ids=[ev.id for ev in events])

