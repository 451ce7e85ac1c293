"""JetStream adapter: the durable pull consumer every usage replica shares.

Each replica fetches batches from the same durable consumer (JetStream hands
any message to one of them at a time), hands them to the ``BatchProcessor``
and goes on. NATS disconnects, timeouts and a vanished consumer are retried
with a back-off; nothing here ends the loop except ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from llmgw_common import subjects

from .handlers import BatchProcessor

log = logging.getLogger(__name__)

ACK_WAIT_S = 30.0
MAX_BACKOFF_S = 5.0


def max_ack_pending_for(batch_size: int) -> int:
    """Room for a few replicas' batches in flight, bounded."""
    return max(1000, min(4 * batch_size, 400_000))


def consumer_config(batch_size: int) -> ConsumerConfig:
    return ConsumerConfig(
        name=subjects.USAGE_CONSUMER,
        durable_name=subjects.USAGE_CONSUMER,
        description="usage service: ClickHouse + Redis window projection",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=max_ack_pending_for(batch_size),
        filter_subject=subjects.USAGE_EVENT_WILDCARD,
    )


async def ensure_consumer(js, batch_size: int) -> None:
    """Create the durable consumer, or update it to this config; a replica with an older config keeps working."""
    try:
        await js.add_consumer(subjects.USAGE_STREAM, config=consumer_config(batch_size))
    except Exception as exc:  # noqa: BLE001
        try:
            await js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        except NotFoundError:
            raise exc from None
        log.warning("usage consumer exists with another config (%s); using it as it is", exc)


class UsageConsumer:
    def __init__(self, js, processor: BatchProcessor, batch_size: int, batch_wait_s: float):
        self._js = js
        self._processor = processor
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._sub = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.batches = 0  # committed batches (observability / tests)

    async def start(self) -> None:
        await self._bind()
        self._task = asyncio.create_task(self._loop(), name="usage-consumer")

    def configure(self, batch_size: int, batch_wait_s: float) -> None:
        self.batch_size, self.batch_wait_s = batch_size, batch_wait_s

    async def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                # the loop finishes the batch in hand (at most one fetch wait + one commit)
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                log.warning("usage consumer did not stop in %.0fs; cancelling", timeout)
                self._task.cancel()
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        await self._unbind()

    async def _bind(self) -> None:
        await ensure_consumer(self._js, self.batch_size)
        self._sub = await self._js.pull_subscribe_bind(durable=subjects.USAGE_CONSUMER, stream=subjects.USAGE_STREAM)

    async def _unbind(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - connection may already be gone
                pass

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _fill_batch(self) -> list:
        """Wait for a first message, then keep fetching for up to ``batch_wait_s`` or until the batch is
        full: one ClickHouse insert per batch, not per trickle of events (small inserts are what
        ClickHouse and chDB handle worst)."""
        msgs = await self._sub.fetch(batch=self.batch_size, timeout=max(self.batch_wait_s, 1.0))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while len(msgs) < self.batch_size and not self._stopping.is_set():
            left = deadline - loop.time()
            if left <= 0.01:
                break
            try:
                msgs += await self._sub.fetch(batch=self.batch_size - len(msgs), timeout=left)
            except asyncio.TimeoutError:
                break
        return msgs

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if self._sub is None:
                    await self._bind()
                msgs = await self._fill_batch()
            except asyncio.TimeoutError:  # nothing to fetch (or NATS away for a moment)
                failures = 0
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - disconnects, consumer deleted, ...
                failures += 1
                log.warning("usage fetch failed (%d in a row): %s: %s", failures, type(exc).__name__, exc)
                if failures >= 3 or isinstance(exc, NotFoundError):
                    await self._unbind()  # bind again (re-creating the consumer) on the next turn
                await self._pause(min(MAX_BACKOFF_S, 0.2 * 2**failures))
                continue
            failures = 0
            if not msgs:
                continue
            try:
                result = await self._processor.process(msgs)
            except Exception:  # noqa: BLE001 - never expected; messages are redelivered after ack_wait
                log.exception("usage batch processing crashed")
                await self._pause(1.0)
                continue
            if result.failed:
                await self._pause(1.0)
            else:
                self.batches += 1
