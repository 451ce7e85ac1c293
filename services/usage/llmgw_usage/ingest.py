"""Ingest: one batch of usage stream messages into ClickHouse and the Redis windows.

A batch is decoded, inserted into ClickHouse, applied to the Redis windows,
and only then acknowledged. Both projections are idempotent by
event id (ClickHouse: ``projection.py``; Redis: a seen-marker per event in the
same Lua script as the increments), so a failure anywhere simply leads to a
redelivery that counts nothing twice. A message that is no event
(``domain.refusal``) goes to the dead letters (``deadletter.py``) and is
terminated: it never blocks the stream and never comes back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from pydantic import ValidationError

from llmgw_common import metrics
from llmgw_common.messages import UsageEvent

from . import domain
from .domain import Refusal
from .projection import ProjectionResult
from .store import ClickHouseUnavailable, InsertRejected, is_unreachable

log = logging.getLogger(__name__)

# how much of an undecodable body may reach the log (it may hold anything)
LOG_PREFIX_BYTES = 32
# redelivery delay after a failed batch (ClickHouse or Redis down)
RETRY_DELAY_S = 2.0
# redelivery delay of an event another replica is inserting into ClickHouse right now
BUSY_RETRY_S = 1.0
# a refused message whose dead letter could not be stored comes back this often before it is terminated
# anyway (logged in full): the dead-letter stream being away must not hold a message forever
DEAD_LETTER_DELIVERIES = 5


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
    stored: int = 0  # distinct events inserted into ClickHouse now
    already: int = 0  # distinct events ClickHouse held before (redelivered / replayed)
    busy: int = 0  # distinct events another writer was inserting: left for redelivery
    applied: int = 0  # events new to the Redis windows (not seen before)
    terminated: int = 0  # refused (no event): never redelivered
    dead_lettered: int = 0  # of those, stored in the dead-letter stream
    deferred: int = 0  # refused, but their dead letter could not be stored yet: redelivered
    failed: bool = False
    errors: list[str] = field(default_factory=list)


def _describe(msg: StreamMsg) -> str:
    seq = ""
    try:
        seq = f" seq={msg.metadata.sequence.stream}"  # type: ignore[attr-defined]
    except Exception:
        pass
    return f"subject={getattr(msg, 'subject', '?')}{seq} size={len(msg.data or b'')}"


def decode_row(data: bytes) -> domain.EventRow:
    """A stream message as an ``EventRow``: the message itself as its ClickHouse row when it decodes strictly
    (``domain.decode_ingest``) and can go as it is, else the event decoded by pydantic's rules and normalized.
    Raises ``ValidationError`` / ``ValueError`` for a message that is no usage event."""
    try:
        ev = domain.decode_ingest(data)
    except ValueError:
        ev = None  # not strictly an IngestEvent (say, no id or ts): UsageEvent's rules decide
    if ev is not None:
        line = domain.raw_line(ev, data)
        if line is not None:
            return domain.EventRow(ev.id, domain.epoch_s(ev.ts), ev, line)
    return domain.event_row(UsageEvent.decode(data))


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return f"{loc}: {err['msg']}" if loc else err["msg"]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _deliveries(msg: StreamMsg) -> int:
    try:
        return int(msg.metadata.num_delivered)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no JetStream metadata
        return 1


class BatchProcessor:
    """``projection``: a ``ClickHouseProjection``; ``writer``: a ``WindowWriter``.

    A batch goes to ClickHouse, then to the Redis windows; the windows go ahead
    even when ClickHouse fails: the router keeps seeing real usage while
    ClickHouse is down (the redelivery then counts nothing twice in Redis).
    """

    def __init__(self, projection, writer, clock: Callable[[], float] = time.time, dead_letters=None,
                 clickhouse_lost: Callable[[BaseException], None] | None = None):
        self._projection = projection
        self._clickhouse_lost = clickhouse_lost  # told when an insert could not reach ClickHouse
        self._writer = writer
        self._clock = clock
        self._dead = dead_letters  # a deadletter.DeadLetters; None: refused messages are only logged

    async def _terminate(self, msg: StreamMsg, refusal: Refusal, result: BatchResult) -> None:
        """Dead-letter a refused message, then terminate it. When the dead letter cannot be stored, the
        message comes back later (nak), and after ``DEAD_LETTER_DELIVERIES`` it is terminated anyway."""
        stored = False
        if self._dead is not None:
            try:
                await self._dead.put(msg, refusal)
                stored = True
            except Exception as exc:  # noqa: BLE001 - NATS away, the stream missing: try again later
                if _deliveries(msg) < DEAD_LETTER_DELIVERIES:
                    log.warning("dead letter of a refused usage message not stored (%s: %s); it comes back in "
                                "%.0fs (%s)", type(exc).__name__, exc, RETRY_DELAY_S, _describe(msg))
                    result.deferred += 1
                    await _quietly(msg.nak, delay=RETRY_DELAY_S)
                    return
                log.error("dead letter of a refused usage message not stored after %d deliveries (%s: %s); "
                          "terminating it anyway (%s, %s: %s)", _deliveries(msg), type(exc).__name__, exc,
                          _describe(msg), refusal.code, refusal.detail)
        log.warning("usage message refused and terminated (%s): %s: %s; %s; body starts %r", _describe(msg),
                    refusal.code, refusal.detail, "dead-lettered" if stored else "not dead-lettered",
                    bytes(msg.data or b"")[:LOG_PREFIX_BYTES])
        result.terminated += 1
        metrics.usage().dead_letters.labels(refusal.code).inc()
        result.dead_lettered += stored
        await _quietly(msg.term)

    async def _decode(self, msgs: Sequence[StreamMsg], result: BatchResult,
                      decode: Callable[[bytes], domain.EventRow]) -> tuple[list[StreamMsg], list[domain.EventRow]]:
        good: list[StreamMsg] = []
        rows: list[domain.EventRow] = []
        for msg in msgs:
            refusal = domain.size_refusal(len(msg.data or b""))
            if refusal is None:
                try:
                    row = decode(msg.data)
                    refusal = domain.refusal(row.event, row.ts_s)
                except (ValidationError, ValueError, TypeError) as exc:
                    refusal = Refusal(domain.INVALID, f"not a usage event: {_reason(exc)}")
            if refusal is None:
                good.append(msg)
                rows.append(row)
            else:
                await self._terminate(msg, refusal, result)
        return good, rows

    async def _project(self, good: list[StreamMsg], rows: list[domain.EventRow], result: BatchResult):
        """The ClickHouse insert. When ClickHouse refuses messages inserted as they are (a value only it
        could not parse), the batch goes again with every event decoded whole and normalized (terminating
        those that are no valid event), and if it refuses even that, event by event (``_isolate``).
        Returns the projection result, and the messages and their rows as finally inserted."""
        try:
            return await self._projection.project(domain.dedupe(rows)), good, rows
        except InsertRejected as exc:
            log.warning("ClickHouse refused a batch of %d usage events as they were sent (%s); inserting them "
                        "normalized", len(rows), str(exc)[:300])
        if not all(isinstance(row.event, UsageEvent) for row in rows):
            good, rows = await self._decode(good, result, lambda data: domain.event_row(UsageEvent.decode(data)))
        return await self._isolate(good, rows, result)

    async def _isolate(self, good: list[StreamMsg], rows: list[domain.EventRow], result: BatchResult):
        """Insert normalized rows, halving the batch while ClickHouse refuses it, down to the single events it
        refuses, which are terminated: an event ClickHouse can never store would otherwise come back forever
        and hold up every event behind it. (Only a value our normalization misses gets here: none is known.)"""
        try:
            return await self._projection.project(domain.dedupe(rows)), good, rows
        except InsertRejected as exc:
            if len(rows) == 1:
                await self._terminate(good[0], Refusal(domain.REJECTED, f"ClickHouse refuses it: {str(exc)[:200]}"),
                                      result)
                return ProjectionResult(), [], []
        mid = len(rows) // 2
        first, good_a, rows_a = await self._isolate(good[:mid], rows[:mid], result)
        second, good_b, rows_b = await self._isolate(good[mid:], rows[mid:], result)
        return (ProjectionResult(first.inserted + second.inserted, first.already + second.already,
                                 first.busy | second.busy), good_a + good_b, rows_a + rows_b)

    async def process(self, msgs: Sequence[StreamMsg]) -> BatchResult:
        result = BatchResult(received=len(msgs))
        good, rows = await self._decode(msgs, result, decode_row)
        if not good:
            return result
        # ClickHouse first, so the windows only count what it did not refuse; then the windows, even when
        # ClickHouse failed. (The consumer commits two batches at once: one's window write overlaps the
        # other's insert.)
        failure: BaseException | None = None
        try:
            projected = await self._project(good, rows, result)
            good, rows = projected[1], projected[2]
        except Exception as exc:  # noqa: BLE001 - reported below, after the windows
            failure = exc
            if self._clickhouse_lost is not None and is_unreachable(exc):
                self._clickhouse_lost(exc)
        try:
            applied = await self._writer.apply([row.event for row in domain.dedupe(rows)], int(self._clock()))
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
        if failure is not None:  # not committed (or only half): redeliver later, both sides are idempotent
            result.failed = True
            result.errors.append(f"{type(failure).__name__}: {failure}")
            # ClickHouse not attached (yet) is logged once by ClickHouseLink, not per batch
            log.log(logging.DEBUG if isinstance(failure, ClickHouseUnavailable) else logging.ERROR,
                    "usage batch of %d not committed, will be redelivered: %s: %s",
                    len(good), type(failure).__name__, str(failure)[:300])
            for msg in good:
                await _quietly(msg.nak, delay=RETRY_DELAY_S)
            return result
        ch = projected[0]
        result.applied = applied
        result.stored, result.already, result.busy = ch.inserted, ch.already, len(ch.busy)
        if ch.busy:
            log.info("%d usage events are being inserted by another writer; they come back in %.0fs",
                     len(ch.busy), BUSY_RETRY_S)
        busy = ch.busy
        for msg, row in zip(good, rows):
            try:
                if row.id in busy:
                    await msg.nak(delay=BUSY_RETRY_S)
                else:
                    await msg.ack()
            except Exception as exc:  # noqa: BLE001 - a lost ack only means a redelivery
                log.warning("could not answer a usage message: %s", exc)
        return result


async def _quietly(fn, *args: Any, **kwargs: Any) -> None:
    """Ack/nak/term are fire-and-forget publishes; a lost one only means a redelivery."""
    try:
        await fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not %s a usage message: %s", getattr(fn, "__name__", "answer"), exc)


