"""Publishes usage events to JetStream after responses, never delaying or failing them.

Events go into a bounded in-memory queue; one worker publishes them with
``Nats-Msg-Id`` = event id (so a retried publish is stored once) and retries
while NATS is away. Whatever is still queued at shutdown is spilled to an
NDJSON file in the state dir and published at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from llmgw_common import subjects
from llmgw_common.messages import UsageEvent

log = logging.getLogger("llmgw.edge.usage")


class UsagePublisher:
    def __init__(self, js, spill_file: Path, max_queued: int = 100_000):
        self._js = js
        self._spill = spill_file
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(max_queued)
        self._worker: asyncio.Task | None = None
        self.published = 0

    def submit(self, event: UsageEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            # last resort: keep it on disk rather than drop it
            self._append_spill([event])

    async def start(self) -> None:
        for event in self._take_spilled():
            self.submit(event)
        self._worker = asyncio.create_task(self._run(), name="usage-publisher")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), flush_timeout)
        except asyncio.TimeoutError:
            pass
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        left = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            log.warning("spilling %d unpublished usage events to %s", len(left), self._spill)
            self._append_spill(left)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            delay = 0.2
            while True:
                try:
                    await self._js.publish(subjects.usage_event_subject(event.provider or "none"), event.encode(),
                                           timeout=5.0, headers={"Nats-Msg-Id": event.id})
                    self.published += 1
                    break
                except asyncio.CancelledError:
                    self._append_spill([event])
                    self._queue.task_done()
                    raise
                except Exception as exc:  # NATS down or JetStream not ready: keep the event, retry
                    log.warning("usage publish failed (%s), retrying in %.1fs", type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._queue.task_done()

    def _append_spill(self, events: list[UsageEvent]) -> None:
        self._spill.parent.mkdir(parents=True, exist_ok=True)
        with self._spill.open("a", encoding="utf-8") as f:
            for e in events:
                f.write(e.model_dump_json() + "\n")

    def _take_spilled(self) -> list[UsageEvent]:
        if not self._spill.exists():
            return []
        events = []
        for line in self._spill.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    events.append(UsageEvent.model_validate_json(line))
                except ValueError:
                    log.error("skipping unreadable spilled usage event")
        self._spill.unlink()
        return events
