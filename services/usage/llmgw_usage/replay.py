"""Reading the usage stream back, and rebuilding the projections from it (``llmgw replay``).

The range (``--since`` / ``--until``) is on the events' own time, ``ts``: what
a user means by "January", also for events imported into the stream in March
(``llmgw events import``). The stream is ordered by the time JetStream *stored*
each event, which is never much before the event's own time: reading starts at
the first event stored at ``since`` minus ``CLOCK_SKEW_S`` (a binary search over
``get_msg``; an ephemeral ordered consumer from there) and goes to the end of
the stream as it is when the replay starts (an event of the range may have been
stored at any time later), keeping the events whose time is in the range. So a
live stream never makes a replay run forever, and the progress bar has a total.

Targets:

- **ClickHouse** goes through ``ClickHouseProjection``, the same guarded insert
  the live consumer uses (claims + "which ids exist already"), so replaying
  twice, or while the live consumer runs, inserts nothing twice. With chDB
  only the usage service may open the data directory: ``RemoteClickHouse``
  sends the events to the running service (``llmgw.usage.replay``);
  ``DirectClickHouse`` opens the store itself when no service answers (and a
  chDB directory still held by a process is refused with a clear message).
- **Redis** windows are written directly (``WindowWriter.apply(...,
  rebuild=True)``: full amounts into the buckets of each event's time, no
  reservations). The per-event seen-markers make a second run a no-op; after a
  Redis flush a replay restores the windows. Events older than the longest
  window are skipped: they would add nothing and only leave seen-markers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import AsyncIterator, Sequence

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from llmgw_common import subjects
from llmgw_common.messages import UsageEvent, UsageReplayBatch, UsageReplayResult
from llmgw_common.nats_conn import request
from llmgw_common.windows import WINDOWS

from . import domain

log = logging.getLogger(__name__)

READ_QUEUE = 10_000  # messages buffered between the ordered consumer and the caller (back-pressure)
IDLE_TIMEOUT_S = 30.0  # no message for this long although some were expected: give up
BUSY_RETRIES = 30  # an event another writer holds is sent again this often, a second apart
# the oldest event a window can still hold: the longest window plus one bucket
REDIS_HORIZON_S = max(w.seconds + w.bucket_s for w in WINDOWS)
# how far a producer's clock may run ahead of the NATS server's: an event is never stored longer than this
# before its own time, so reading from ``since`` minus this (store time) finds every event from ``since`` on
CLOCK_SKEW_S = 600


class ReplayError(RuntimeError):
    """A replay that cannot run as asked; the message says what to do."""


def _utc(dt: datetime) -> datetime:
    return domain.to_utc(dt)


# ---- the stream range ---------------------------------------------------------

async def _first_at_or_after(js, seq: int):
    try:
        return await js.get_msg(subjects.USAGE_STREAM, seq=seq, subject=subjects.USAGE_EVENT_WILDCARD, next=True)
    except NotFoundError:
        return None


async def seq_at_time(js, when: datetime) -> int:
    """The first stream sequence stored at or after ``when`` (one past the last when none is)."""
    info = await js.stream_info(subjects.USAGE_STREAM)
    lo, hi = info.state.first_seq, info.state.last_seq + 1
    when = _utc(when)
    while lo < hi:  # invariant: the answer lies in [lo, hi]; store times grow with the sequence
        mid = (lo + hi) // 2
        msg = await _first_at_or_after(js, mid)
        if msg is None or _utc(msg.time) >= when:
            hi = mid  # nothing stored between mid and msg.seq: starting at mid is the same
        else:
            lo = msg.seq + 1
    return lo


@dataclass
class StreamRange:
    """The stream sequences to read, and the event times to keep from them."""

    start_seq: int  # first sequence that may hold an event of the range
    end_seq: int  # first sequence past what is read: the end of the stream when the range was resolved
    since: datetime | None  # event time, inclusive
    until: datetime | None  # event time, exclusive

    @property
    def total(self) -> int:
        """Messages to read, at most (deleted messages leave gaps); the range keeps those of its times."""
        return max(0, self.end_seq - self.start_seq)

    def holds(self, ev: UsageEvent) -> bool:
        """Whether the event's own time is in the range."""
        ts = _utc(ev.ts)
        return (self.since is None or ts >= _utc(self.since)) and (self.until is None or ts < _utc(self.until))


async def resolve_range(js, since: datetime | None, until: datetime | None) -> StreamRange:
    if since is not None and until is not None and _utc(until) <= _utc(since):
        raise ReplayError("--until must be after --since")
    try:
        info = await js.stream_info(subjects.USAGE_STREAM)
    except NotFoundError:
        raise ReplayError(f"the stream {subjects.USAGE_STREAM} does not exist on this NATS server (has the "
                          "gateway ever run against it? check --nats-url)") from None
    end = info.state.last_seq + 1
    if info.state.messages == 0:
        return StreamRange(end, end, since, until)
    start = info.state.first_seq
    if since is not None:
        start = await seq_at_time(js, _utc(since) - timedelta(seconds=CLOCK_SKEW_S))
    return StreamRange(start, max(start, end), since, until)


@dataclass
class StreamItem:
    seq: int
    data: bytes


async def read_range(js, rng: StreamRange, idle_timeout_s: float = IDLE_TIMEOUT_S) -> AsyncIterator[StreamItem]:
    """Every message in ``rng``, in stream order, through an ephemeral ordered consumer."""
    if rng.total == 0:
        return
    queue: asyncio.Queue = asyncio.Queue(maxsize=READ_QUEUE)

    async def on_msg(msg) -> None:
        await queue.put(msg)  # blocks the subscription when the caller is slower: flow control does the rest

    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    if rng.start_seq > 1:  # ordered consumer from the start sequence; the end bound ends it
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=rng.start_seq)
    sub = await js.subscribe(subjects.USAGE_EVENT_WILDCARD, stream=subjects.USAGE_STREAM, cb=on_msg,
                             ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), idle_timeout_s)
            except TimeoutError:
                raise ReplayError(f"no message from the stream for {idle_timeout_s:.0f}s although the range is "
                                  "not finished (was the stream purged meanwhile?)") from None
            meta = msg.metadata
            seq = meta.sequence.stream
            if seq >= rng.end_seq:
                return
            if seq >= rng.start_seq:
                yield StreamItem(seq, msg.data)
            if meta.num_pending == 0 or seq + 1 >= rng.end_seq:
                return
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - connection may be gone already
            pass


def decode(data: bytes) -> tuple[UsageEvent | None, str | None]:
    """(event, None) or (None, why it is unusable): the live consumer's rules (``domain.refusal``), so what
    it dead-lettered is never replayed, exported or imported."""
    too_large = domain.size_refusal(len(data))
    if too_large is not None:
        return None, too_large.detail
    try:
        ev = UsageEvent.decode(data)
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError) and exc.errors():
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "<body>"
            return None, f"{loc}: {err['msg']}"
        return None, type(exc).__name__
    refusal = domain.refusal(ev)
    return (None, refusal.detail) if refusal else (ev, None)


# ---- targets ------------------------------------------------------------------

@dataclass
class TargetStats:
    new: int = 0  # inserted / applied now (dry run: would be)
    already: int = 0  # there before
    skipped: int = 0  # not for this target (Redis: older than every window, or served by nobody)


async def _until_not_busy(write, items: Sequence, stats: TargetStats) -> None:
    """``write(items)`` (events or rows, each with an ``id``), then again with the items another writer held
    (claimed, being inserted), a second apart, until none is busy; counts what was new and what was there."""
    pending = list(items)
    for attempt in range(BUSY_RETRIES + 1):
        res = await write(pending)
        stats.new += res.inserted
        stats.already += res.already
        if not res.busy:
            return
        if attempt == BUSY_RETRIES:
            raise ReplayError(f"{len(res.busy)} events stayed claimed by another writer for "
                              f"{BUSY_RETRIES}s; run the replay again later")
        busy = set(res.busy)
        pending = [item for item in pending if item.id in busy]
        await asyncio.sleep(1.0)


class RemoteClickHouse:
    """ClickHouse through the running usage service (the owner of the chDB directory)."""

    name = "clickhouse"

    def __init__(self, nc, timeout_s: float = 120.0):
        self._nc = nc
        self._timeout = timeout_s
        self.stats = TargetStats()
        # a request must stay below the server's max payload (events may carry bodies)
        self._max_bytes = max(64 * 1024, int(nc.max_payload * 0.8)) if nc.max_payload else 800_000

    async def _send(self, events: list[UsageEvent], dry_run: bool) -> UsageReplayResult:
        return await request(self._nc, subjects.USAGE_REPLAY, UsageReplayBatch(events=events, dry_run=dry_run),
                             UsageReplayResult, self._timeout)

    def _chunks(self, events: Sequence[UsageEvent]) -> list[list[UsageEvent]]:
        chunks: list[list[UsageEvent]] = [[]]
        size = 0
        for ev in events:
            n = len(ev.encode()) + 2
            if chunks[-1] and size + n > self._max_bytes:
                chunks.append([])
                size = 0
            chunks[-1].append(ev)
            size += n
        return [c for c in chunks if c]

    async def apply(self, events: Sequence[UsageEvent], dry_run: bool) -> None:
        for chunk in self._chunks(events):
            await _until_not_busy(lambda pending: self._send(pending, dry_run), chunk, self.stats)

    async def close(self) -> None:
        pass


class DirectClickHouse:
    """ClickHouse opened by this process: a ClickHouse server, or a chDB directory no process holds."""

    name = "clickhouse"

    def __init__(self, store, projection):
        self._store = store
        self._projection = projection
        self.stats = TargetStats()

    @classmethod
    async def open(cls, url: str, chdb_path: Path, redis) -> DirectClickHouse:
        from .projection import ClickHouseProjection
        from .store import ClickHouseStore, StoreBusyError

        store = ClickHouseStore(url, chdb_path)
        try:
            await store.open()
        except StoreBusyError as exc:
            await store.close()
            raise ReplayError(
                f"{exc}: a usage service that does not answer on this NATS server? Either point --nats-url at "
                "the NATS server that usage service uses, so the replay goes through it, or stop it first.") from None
        except Exception as exc:
            await store.close()
            raise ReplayError(f"cannot open ClickHouse ({'server' if url else chdb_path}): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
        projection = ClickHouseProjection(store, redis)
        try:
            await projection.recover()
        except Exception:
            await store.close()
            raise
        return cls(store, projection)

    async def apply(self, events: Sequence[UsageEvent], dry_run: bool) -> None:
        from .projection import project_leaving_out_refused

        rows = [domain.event_row(ev) for ev in events]
        await _until_not_busy(lambda pending: project_leaving_out_refused(self._projection, pending, dry_run),
                              rows, self.stats)

    async def close(self) -> None:
        await self._store.close()


class RedisWindows:
    """The live windows, rebuilt from the events (no reservations: full amounts)."""

    name = "redis"

    def __init__(self, redis, clock=time.time):
        from .windows_writer import WindowWriter

        self._redis = redis
        self._writer = WindowWriter(redis)
        self._clock = clock
        self.stats = TargetStats()

    async def apply(self, events: Sequence[UsageEvent], dry_run: bool) -> None:
        now = self._clock()
        horizon = datetime.fromtimestamp(now - REDIS_HORIZON_S, tz=timezone.utc)
        usable = [ev for ev in events if domain.event_scopes(ev) and _utc(ev.ts) >= horizon]
        self.stats.skipped += len(events) - len(usable)
        if not usable:
            return
        if dry_run:
            seen = await self._writer.count_applied(usable, int(now))
            self.stats.already += seen
            self.stats.new += len(usable) - seen
            return
        applied = await self._writer.apply(usable, int(now), rebuild=True)
        self.stats.new += applied
        self.stats.already += len(usable) - applied

    async def close(self) -> None:
        pass


# ---- the replay -----------------------------------------------------------------

@dataclass
class ReplayStats:
    read: int = 0  # messages read from the range
    unusable: int = 0  # could not be decoded (or can never be stored)
    duplicates: int = 0  # the same event id again within the range (stored twice in the stream)
    outside: int = 0  # read, but the event's own time is outside the range
    targets: dict[str, TargetStats] = field(default_factory=dict)


async def replay(js, rng: StreamRange, targets: list, dry_run: bool = False, batch_size: int = 1000,
                 on_progress=None) -> ReplayStats:
    """Feed every event in ``rng`` to every target, in batches; ``on_progress(read)`` after each batch."""
    stats = ReplayStats(targets={t.name: t.stats for t in targets})
    batch: list[UsageEvent] = []
    ids: set[str] = set()

    async def flush() -> None:
        if batch:
            for t in targets:
                await t.apply(batch, dry_run)
            batch.clear()
            ids.clear()
        if on_progress is not None:
            on_progress(stats.read)

    async for item in read_range(js, rng):
        stats.read += 1
        ev, why = decode(item.data)
        if ev is None:
            stats.unusable += 1
            log.warning("stream message %d skipped: %s", item.seq, why)
        elif not rng.holds(ev):
            stats.outside += 1
        elif ev.id in ids:
            stats.duplicates += 1
        else:
            ids.add(ev.id)
            batch.append(ev)
        if len(batch) >= batch_size:
            await flush()
    await flush()
    return stats


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (``2025-01-31``, ``2025-01-31T12:00:00Z``; no zone = UTC) or relative to now:
    ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` (that long ago)."""
    now = now or datetime.now(timezone.utc)
    s = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if len(s) >= 2 and s[-1].lower() in units and s[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(seconds=float(s[:-1]) * units[s[-1].lower()])
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601 like 2025-01-31T12:00:00Z, or relative like "
                         "90s, 15m, 2h, 7d, 1w)") from None
    return _utc(dt)
