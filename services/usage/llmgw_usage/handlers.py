"""Handlers: one batch of stream messages, and the NATS usage queries.

A batch is decoded, inserted into ClickHouse, applied to the Redis windows,
and only then acknowledged. Both projections are idempotent by event id, so a
failure anywhere simply leads to a redelivery that counts nothing twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from pydantic import ValidationError

from llmgw_common.messages import UsageCurrentQuery, UsageEvent, UsageHistory, UsageHistoryQuery, utcnow
from llmgw_common.windows import SCOPES_KEY

from . import domain

log = logging.getLogger(__name__)

# how much of an undecodable body may reach the log (it may hold anything)
LOG_PREFIX_BYTES = 32
# redelivery delay after a failed batch (ClickHouse or Redis down)
RETRY_DELAY_S = 2.0


class StreamMsg(Protocol):
    """What a JetStream message offers (nats.aio.msg.Msg)."""

    data: bytes
    subject: str

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self) -> None: ...


@dataclass
class BatchResult:
    received: int = 0
    stored: int = 0  # distinct events inserted into ClickHouse
    applied: int = 0  # events new to the Redis windows (not seen before)
    terminated: int = 0  # undecodable, never redelivered
    failed: bool = False
    errors: list[str] = field(default_factory=list)


def _describe(msg: StreamMsg) -> str:
    seq = ""
    try:
        seq = f" seq={msg.metadata.sequence.stream}"  # type: ignore[attr-defined]
    except Exception:
        pass
    return f"subject={getattr(msg, 'subject', '?')}{seq} size={len(msg.data or b'')}"


class BatchProcessor:
    def __init__(self, store, writer, clock: Callable[[], float] = time.time):
        self._store = store
        self._writer = writer
        self._clock = clock

    async def process(self, msgs: Sequence[StreamMsg]) -> BatchResult:
        result = BatchResult(received=len(msgs))
        good: list[StreamMsg] = []
        events: list[UsageEvent] = []
        for msg in msgs:
            try:
                ev = UsageEvent.decode(msg.data)
                reason = domain.rejection_reason(ev)
            except (ValidationError, ValueError, TypeError) as exc:
                ev = None
                reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) and exc.errors() else type(exc).__name__
            if reason is None:
                events.append(ev)
                good.append(msg)
                continue
            log.warning("unusable usage message terminated (%s): %s; body starts %r",
                        _describe(msg), reason, bytes(msg.data or b"")[:LOG_PREFIX_BYTES])
            result.terminated += 1
            await _quietly(msg.term)

        if not good:
            return result
        unique = domain.dedupe(events)
        try:
            result.stored = await self._store.insert_events(unique)
            result.applied = await self._writer.apply(unique, int(self._clock()))
        except Exception as exc:  # noqa: BLE001 - any failure means: not committed, redeliver later
            result.failed = True
            result.errors.append(f"{type(exc).__name__}: {exc}")
            log.error("usage batch of %d not committed, will be redelivered: %s: %s",
                      len(good), type(exc).__name__, str(exc)[:300])
            for msg in good:
                await _quietly(msg.nak, delay=RETRY_DELAY_S)
            return result
        for msg in good:
            await _quietly(msg.ack)
        return result


async def _quietly(fn, *args: Any, **kwargs: Any) -> None:
    """Ack/nak/term are fire-and-forget publishes; a lost one only means a redelivery."""
    try:
        await fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not %s a usage message: %s", getattr(fn, "__name__", "answer"), exc)


class QueryHandlers:
    """The ``usage`` micro-service endpoints. Errors go back as 400 / 500 with a short message."""

    def __init__(self, store, redis, reader, clock: Callable[[], float] = time.time):
        self._store = store
        self._redis = redis
        self._reader = reader
        self._clock = clock

    async def current(self, req) -> None:
        try:
            UsageCurrentQuery.decode(req.data or b"{}")
        except (ValidationError, ValueError) as exc:
            await req.respond_error("400", _bad_request(exc))
            return
        try:
            now = self._clock()
            scopes = sorted(await self._redis.smembers(SCOPES_KEY))
            totals = await self._reader.read(scopes, int(now))
            reply = domain.current_from_totals(totals, at=utcnow())
        except Exception as exc:  # noqa: BLE001
            log.exception("usage current query failed")
            await req.respond_error("500", f"usage windows unavailable: {type(exc).__name__}")
            return
        await req.respond(reply.encode())

    async def history(self, req) -> None:
        try:
            q = UsageHistoryQuery.decode(req.data or b"{}")
        except (ValidationError, ValueError) as exc:
            await req.respond_error("400", _bad_request(exc))
            return
        if q.since is not None and q.until is not None and domain.to_utc(q.until) <= domain.to_utc(q.since):
            await req.respond_error("400", "until must be after since")
            return
        try:
            rows = await self._store.history(q)
        except Exception as exc:  # noqa: BLE001
            log.exception("usage history query failed")
            await req.respond_error("500", f"usage history unavailable: {type(exc).__name__}")
            return
        await req.respond(UsageHistory(rows=rows).encode())


def _bad_request(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(x) for x in err["loc"]) or "<body>"
            parts.append(f"{loc}: {err['msg']}")
        return "invalid request: " + "; ".join(parts)
    return "invalid request"
