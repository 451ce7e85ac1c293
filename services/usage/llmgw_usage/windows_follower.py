"""The Redis windows while ClickHouse is away: read from the stream past the durable consumer.

The durable consumer acknowledges an event only once ClickHouse has stored it. While ClickHouse is away its
batches fail and come back, and JetStream hands out the ones that come back before new ones: the windows
stopped moving after a few batches (measured: 100 events with batches of 20, however many more arrived).
So while ClickHouse is not attached the usage service stops pulling from the durable consumer, and this
follower reads the stream itself, from the first event the durable consumer has not acknowledged, with an
ordered consumer of its own (nothing acknowledged, nothing held), and applies each event to the windows.
When ClickHouse is attached again the follower stops and the durable consumer goes on: the events come to
it as before, ClickHouse stores each once, and the windows count none twice (the seen-marker per event id,
``domain.APPLY_EVENTS_LUA``). Messages that are no event are left to the durable consumer, which dead-letters
them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from llmgw_common import subjects

from . import domain
from .ingest import decode_row
from .windows_writer import WindowWriter

log = logging.getLogger(__name__)

WAIT_S = 1.0  # for the first message of a batch
RETRY_S = 2.0  # after NATS or Redis failed


class WindowFollower:
    def __init__(self, js, writer: WindowWriter, batch_size: Callable[[], int], clock: Callable[[], float] = time.time):
        self._js = js
        self._writer = writer
        self._batch_size = batch_size
        self._clock = clock
        self.applied = 0  # events new to the windows (observability, tests)

    async def run(self) -> None:
        """Until cancelled; NATS or Redis failing starts it over from the durable consumer's ack floor."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or Redis away: start over
                log.warning("usage windows follower: %s: %s; again in %.0fs", type(exc).__name__, exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _follow(self) -> None:
        info = await self._js.consumer_info(subjects.USAGE_STREAM, subjects.USAGE_CONSUMER)
        start = info.ack_floor.stream_seq + 1
        sub = await self._js.subscribe(
            subjects.USAGE_EVENT_WILDCARD, stream=subjects.USAGE_STREAM, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start))
        log.info("usage windows follower: reading the stream from sequence %d while ClickHouse is away", start)
        try:
            while True:
                batch = await self._next_batch(sub)
                if batch:
                    self.applied += await self._writer.apply(batch, int(self._clock()))
        finally:
            await sub.unsubscribe()

    async def _next_batch(self, sub) -> list:
        """The events among the next messages: waits for the first, then takes what is already there."""
        events = []
        wait = WAIT_S
        for _ in range(self._batch_size()):
            try:
                msg = await sub.next_msg(timeout=wait)
            except NatsTimeoutError:
                break
            wait = 0.001
            if domain.size_refusal(len(msg.data or b"")) is not None:
                continue
            try:
                row = decode_row(msg.data)
            except (ValueError, TypeError):
                continue  # no event: the durable consumer dead-letters it
            if domain.refusal(row.event, row.ts_s) is None:
                events.append(row.event)
        return domain.dedupe(events)
