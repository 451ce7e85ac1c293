"""JetStream adapter: the durable pull consumer every usage replica shares.

Each replica pulls batches from the same durable consumer (JetStream hands
any message to one of them at a time) and hands them to the ``BatchProcessor``.
The next batch is pulled while earlier ones are being committed, and two
batches commit at once, so the network, ClickHouse and Redis work overlap;
ClickHouse inserts themselves stay one at a time. NATS disconnects, timeouts and a vanished consumer are retried with a
back-off; nothing here ends the loop except ``stop()``. While its ``gate`` is closed (ClickHouse not attached:
``clickhouse_link.py``) it pulls nothing: its batches could not be acknowledged, and the windows follow the
stream meanwhile (``windows_follower.py``).

Observability (docs/observability.md): each batch's size, duration and results go to the
``llmgw_usage_*`` series, the consumer's lag (``num_pending``, ``num_ack_pending``, ``num_redelivered``)
is polled every ``LAG_POLL_S``. While tracing is on, a batch is one span (a trace of its own, linked to
its events' traces) and each event that carries a trace context (the edge's ``traceparent`` header) gets
a CONSUMER span in its request's trace, covering the batch's commit and linked to the batch span.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from llmgw_common import metrics, subjects, tracing

from .ingest import BatchProcessor

log = logging.getLogger(__name__)

ACK_WAIT_S = 30.0
MAX_BACKOFF_S = 5.0
# batches committing at once: one batch's decoding and window write (event loop) overlap the next one's
# ClickHouse insert (its own thread); inserts themselves stay one at a time (the store's single thread)
COMMITS_IN_FLIGHT = 2
# extra wait beyond a pull request's own expiry before we stop waiting for its 408
PULL_GRACE_S = 2.0
# how often the consumer's lag is read (one JetStream API request)
LAG_POLL_S = 5.0
# a batch span links to at most this many of its events
MAX_BATCH_LINKS = 128


def max_ack_pending_for(batch_size: int) -> int:
    """Room for a few replicas' batches in flight, bounded."""
    return max(1000, min(4 * batch_size, 400_000))


def consumer_config(batch_size: int, ack_wait_s: float | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        name=subjects.USAGE_CONSUMER,
        durable_name=subjects.USAGE_CONSUMER,
        description="usage service: ClickHouse + Redis window projection",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S if ack_wait_s is None else ack_wait_s,
        max_ack_pending=max_ack_pending_for(batch_size),
        filter_subject=subjects.USAGE_EVENT_WILDCARD,
    )


async def ensure_consumer(js, batch_size: int, ack_wait_s: float | None = None) -> None:
    """Create the durable consumer, or update it to this config; a replica with an older config keeps working."""
    try:
        await js.add_consumer(subjects.USAGE_STREAM, config=consumer_config(batch_size, ack_wait_s))
    except Exception as exc:  # noqa: BLE001
        try:
            await js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        except NotFoundError:
            raise exc from None
        log.warning("usage consumer exists with another config (%s); using it as it is", exc)


class PullError(Exception):
    """A pull request ended with an error status (consumer deleted, no responders, ...)."""


class PullFetcher:
    """Pull requests on a durable consumer, answered into an inbox of our own (public NATS API only).

    nats-py's ``PullSubscription.fetch`` awaits every message separately with
    its own timeout; at thousands of events per second that was most of the
    consumer's CPU. Here the subscription callback appends each message to a
    buffer and wakes the fetch once the batch is full or the pull request ended
    (status 408 at its expiry). Every request gets its own reply subject, so a
    late status of an earlier request never ends a later one; late messages of
    an earlier request are simply part of the next batch.
    """

    def __init__(self, nc, stream: str, durable: str):
        self._nc = nc
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._sub = None
        self._prefix = ""
        self._buf: list = []
        self._want = 0
        self._seq = 0
        self._ended: dict[str, str] = {}  # reply subject -> status of a pull request that ended
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_msg,
                                             pending_msgs_limit=1_000_000, pending_bytes_limit=1024**3)

    async def close(self) -> None:
        """Unsubscribe; messages received but never handed out are given back (nak) for prompt redelivery."""
        sub, self._sub = self._sub, None
        left, self._buf = self._buf, []
        for msg in left:
            with contextlib.suppress(Exception):
                await msg.nak()
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_msg(self, msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            status = headers.get("Status", "")
            if status != "100":  # 100: idle heartbeat; 404/408: request done; 409/503: consumer trouble
                self._ended[msg.subject] = f"{status} {headers.get('Description', '')}".strip()
                self._wake.set()
            return
        self._buf.append(msg)
        if len(self._buf) >= self._want:
            self._wake.set()

    async def fetch(self, batch: int, wait_s: float) -> list:
        """Up to ``batch`` messages: as soon as ``batch`` are there, else whatever arrived within ``wait_s``."""
        if self._sub is None:
            raise PullError("fetcher not started")
        status = ""
        if len(self._buf) < batch:
            self._seq += 1
            reply = f"{self._prefix}.{self._seq}"
            self._want = batch
            request = {"batch": batch - len(self._buf), "expires": int(wait_s * 1e9)}
            await self._nc.publish(self._api, json.dumps(request).encode(), reply=reply)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s + PULL_GRACE_S
            while len(self._buf) < batch and reply not in self._ended:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            status = self._ended.pop(reply, "")
            self._ended.clear()  # statuses of older requests no longer matter
        out, self._buf = self._buf[:batch], self._buf[batch:]
        if not out and status and not status.startswith(("404", "408")):
            raise PullError(f"pull request ended: {status}")
        return out


class UsageConsumer:
    def __init__(self, js, processor: BatchProcessor, batch_size: int, batch_wait_s: float, nc=None,
                 ack_wait_s: float | None = None, gate: asyncio.Event | None = None):
        self._js = js
        self._gate = gate  # pull only while it is set (None: always)
        self._ack_wait_s = ack_wait_s
        self._nc = nc if nc is not None else js._nc  # the connection the JetStream context uses
        self._processor = processor
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._fetcher: PullFetcher | None = None
        self._task: asyncio.Task | None = None
        self._lag_task: asyncio.Task | None = None
        self._metrics = metrics.usage()
        self._stopping = asyncio.Event()
        self.batches = 0  # committed batches (observability / tests)
        self.events = 0  # messages acknowledged in committed batches

    async def start(self) -> None:
        await self._bind()
        self._task = asyncio.create_task(self._loop(), name="usage-consumer")
        self._lag_task = asyncio.create_task(self._poll_lag(), name="usage-consumer-lag")

    def configure(self, batch_size: int, batch_wait_s: float) -> None:
        self.batch_size, self.batch_wait_s = batch_size, batch_wait_s

    async def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._task is not None:
            try:
                # the loop finishes the batches in hand (at most one pull wait + one commit)
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                log.warning("usage consumer did not stop in %.0fs; cancelling", timeout)
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        await self._unbind()

    async def _bind(self) -> None:
        await ensure_consumer(self._js, self.batch_size, self._ack_wait_s)
        fetcher = PullFetcher(self._nc, subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        await fetcher.start()
        self._fetcher = fetcher

    async def _unbind(self) -> None:
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            await fetcher.close()

    async def _through_gate(self) -> None:
        """Until the gate is open, or the consumer stops."""
        if self._gate is None or self._gate.is_set():
            return
        waits = [asyncio.create_task(self._gate.wait()), asyncio.create_task(self._stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _poll_lag(self) -> None:
        """The consumer's lag into the gauges, now and every ``LAG_POLL_S``."""
        m = self._metrics
        while not self._stopping.is_set():
            try:
                info = await self._js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
                m.pending.set(info.num_pending or 0)
                m.ack_pending.set(info.num_ack_pending or 0)
                m.redelivered.set(info.num_redelivered or 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: the next poll tries again
                log.debug("cannot read the usage consumer's lag: %s", exc)
            await self._pause(LAG_POLL_S)

    def _count(self, msgs: list, result, seconds: float) -> None:
        m = self._metrics
        m.batch_size.observe(len(msgs))
        m.batch_duration.observe(seconds)
        if result is None or result.failed:
            m.batches.labels("failed").inc()
            settled = 0 if result is None else result.terminated + result.deferred
            m.events.labels("failed").inc(len(msgs) - settled)
        else:
            m.batches.labels("committed").inc()
            for label, n in (("ingested", result.stored), ("duplicate", result.already), ("busy", result.busy)):
                if n:
                    m.events.labels(label).inc(n)
        if result is not None:
            for label, n in (("refused", result.terminated), ("deferred", result.deferred)):
                if n:
                    m.events.labels(label).inc(n)

    async def _commit(self, msgs: list) -> None:
        t0 = time.perf_counter()
        traced = _BatchTrace(msgs) if tracing.enabled else None
        try:
            with tracing.using(traced.span if traced else None):
                result = await self._processor.process(msgs)
        except Exception:  # noqa: BLE001 - never expected; messages are redelivered after ack_wait
            log.exception("usage batch processing crashed")
            self._count(msgs, None, time.perf_counter() - t0)
            if traced:
                traced.end(None)
            await self._pause(1.0)
            return
        self._count(msgs, result, time.perf_counter() - t0)
        if traced:
            traced.end(result)
        if result.failed:
            await self._pause(1.0)
        else:
            self.batches += 1
            self.events += result.received - result.busy - result.deferred

    async def _loop(self) -> None:
        failures = 0
        committing: collections.deque[asyncio.Task] = collections.deque()
        try:
            while not self._stopping.is_set():
                await self._through_gate()
                if self._stopping.is_set():
                    break
                try:
                    if self._fetcher is None:
                        await self._bind()
                    # the next batch arrives while earlier ones commit
                    msgs = await self._fetcher.fetch(self.batch_size, self.batch_wait_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - disconnects, consumer deleted, ...
                    failures += 1
                    log.warning("usage fetch failed (%d in a row): %s: %s", failures, type(exc).__name__, exc)
                    if failures >= 3 or isinstance(exc, (NotFoundError, PullError)):
                        await self._unbind()  # bind again (re-creating the consumer) on the next turn
                    await self._pause(min(MAX_BACKOFF_S, 0.2 * 2**failures))
                    continue
                failures = 0
                while committing and (committing[0].done() or len(committing) >= COMMITS_IN_FLIGHT):
                    await committing.popleft()
                if msgs:
                    committing.append(asyncio.create_task(self._commit(msgs), name="usage-commit"))
        finally:
            for task in committing:
                await task


class _BatchTrace:
    """A batch's span (linked to its events' traces) and, at its end, one span per traced event."""

    def __init__(self, msgs: list):
        self.start_ns = time.time_ns()
        self.contexts = [tracing.extract(getattr(m, "headers", None)) for m in msgs]
        links = [link for link in map(tracing.link_to, self.contexts[:MAX_BATCH_LINKS]) if link is not None]
        self.span = tracing.start("llmgw.usage", "usage batch", tracing.CONSUMER,
                                  {"messaging.system": "nats", "messaging.destination.name": subjects.USAGE_STREAM,
                                   "messaging.batch.message_count": len(msgs)}, links=links,
                                  start_time=self.start_ns)

    def end(self, result) -> None:
        failed = result is None or result.failed
        error = "batch not committed (redelivered)" if failed else None
        attrs = {} if result is None else {"llmgw.usage.ingested": result.stored,
                                           "llmgw.usage.duplicate": result.already,
                                           "llmgw.usage.refused": result.terminated}
        end_ns = time.time_ns()
        tracing.end(self.span, error, attrs, end_time=end_ns)
        batch_link = [tracing.Link(self.span.get_span_context())] if self.span is not None else None
        for context in self.contexts:
            if tracing.link_to(context) is None:  # no trace context: an event from replay, import, the router
                continue
            s = tracing.start("llmgw.usage", "ingest usage event", tracing.CONSUMER,
                              {"messaging.system": "nats", "messaging.destination.name": subjects.USAGE_STREAM},
                              context=context, links=batch_link, start_time=self.start_ns)
            tracing.end(s, error, end_time=end_ns)
