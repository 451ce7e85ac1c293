"""Publishes usage events to JetStream after responses, never delaying or failing them.

Events go into a bounded in-memory queue; one worker publishes them with
``Nats-Msg-Id`` = event id (so a retried publish is stored once) and retries
while NATS is away. Whatever is not published at shutdown — the queue and the
event the worker holds, whichever ``await`` it was stopped at — is spilled to
disk and published at the next start.

Spill files live in one directory shared by every edge replica (a volume in
compose): each replica appends to its own file (``<replica id>.ndjson``,
under an exclusive ``flock``), and a starting replica claims every file there,
its own or a dead replica's, by taking the lock and renaming it before it
reads. A file is therefore sent by exactly one replica; an event sent twice
anyway (a publish whose ack was lost) is stored once by its id.

While tracing is on, an event's message carries the trace context of the
request that made it (``traceparent``, taken when it is queued), so the usage
service's ingest span joins the request's trace.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
from pathlib import Path

from llmgw_common import metrics, subjects, tracing
from llmgw_common.ids import new_id
from llmgw_common.messages import UsageEvent

log = logging.getLogger("llmgw.edge.usage")

PUBLISH_BATCH = 256  # events published before their acks are awaited
ACK_TIMEOUT_S = 5.0


def replica_id(port: int) -> str:
    """``LLMGW_REPLICA_ID`` when set (compose, the runner), else host, port and process: unique per replica."""
    return os.environ.get("LLMGW_REPLICA_ID") or f"{socket.gethostname()}-{port}-{os.getpid()}"


class UsagePublisher:
    def __init__(self, js, spill_dir: Path, replica: str, max_queued: int = 100_000):
        self._js = js
        self._spill_dir = spill_dir
        self._spill = spill_dir / f"{replica}.ndjson"
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(max_queued)
        self._worker: asyncio.Task | None = None
        self._holding: list[UsageEvent] = []  # taken from the queue, not yet acknowledged by JetStream
        self._claims: list[tuple[Path, object]] = []  # spill files taken at start, locked until sent
        self._claimed_events = 0
        self.published = 0
        self._traces: dict[str, dict[str, str]] = {}  # event id -> trace headers (tracing on only)
        self._metrics = metrics.edge()
        self._metrics.usage_queue.set_function(self._queue.qsize)

    def submit(self, event: UsageEvent) -> None:
        if tracing.enabled:
            self._traces[event.id] = tracing.inject()
        try:
            self._queue.put_nowait(event)
            self._metrics.usage_queued.inc()
        except asyncio.QueueFull:
            # last resort: keep it on disk rather than drop it
            self._append_spill([event])

    async def start(self) -> None:
        for event in self._claim_spilled():
            self.submit(event)
        self._worker = asyncio.create_task(self._run(), name="usage-publisher")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), flush_timeout)
        except TimeoutError:
            pass
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        left = list(self._holding)
        self._holding = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            log.warning("spilling %d unpublished usage events to %s", len(left), self._spill)
            self._append_spill(left)
        # claimed events still unsent are in ``left`` (spilled again) or were sent: the claims can go
        self._release_claims()

    async def _run(self) -> None:
        while True:
            # everything queued goes out together: one write for many messages under load, acks awaited
            # together; the events stay held (spilled by ``stop``) until each is acknowledged
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._holding = batch
            pending, delay = batch, 0.2
            while pending:
                try:
                    pending = await self._publish(pending)
                except asyncio.CancelledError:
                    raise  # ``stop`` spills what we hold
                except Exception as exc:  # NATS down or JetStream not ready: keep the events, retry
                    log.warning("usage publish failed (%s), retrying in %.1fs", type(exc).__name__, delay)
                if pending:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._holding = []
            self.published += len(batch)
            self._metrics.usage_published.inc(len(batch))
            for _ in batch:
                self._queue.task_done()
            if self._claims and self.published >= self._claimed_events:
                self._release_claims()  # the claimed events were queued first: all of them are out

    async def _publish(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """Publish every event, then wait for every ack (``ACK_TIMEOUT_S`` in all); the ones not stored."""
        acks = []
        for event in events:
            headers = {"Nats-Msg-Id": event.id}  # a retried publish is stored once
            if self._traces:
                headers.update(self._traces.pop(event.id, ()))
            acks.append(await self._js.publish_async(subjects.usage_event_subject(event.provider or "none"),
                                                     event.encode(), headers=headers))
        try:
            results = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), ACK_TIMEOUT_S)
        except TimeoutError:
            return events
        failed = [e for e, r in zip(events, results) if isinstance(r, BaseException)]
        if failed:
            first = next(r for r in results if isinstance(r, BaseException))
            log.warning("%d usage events not stored (%s): trying again", len(failed), type(first).__name__)
        return failed

    def _append_spill(self, events: list[UsageEvent]) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        with self._spill.open("a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a starting replica claiming this file waits for the whole batch
            for e in events:
                f.write(e.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._metrics.usage_spilled.inc(len(events))
        for e in events:
            self._traces.pop(e.id, None)

    def _claim_spilled(self) -> list[UsageEvent]:
        """Every spill file in the directory, renamed to a claim this process holds locked until its
        events are published (a claim whose holder died is claimed again by the next start)."""
        if not self._spill_dir.is_dir():
            return []
        events: list[UsageEvent] = []
        for path in sorted(self._spill_dir.glob("*.ndjson")) + sorted(self._spill_dir.glob(".claimed-*")):
            try:
                f = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue
            try:
                # a writer holds its lock only while appending: wait for it; a live claim's holder keeps
                # its lock until its events are out: leave that claim alone
                fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if path.name.startswith(".claimed-") else 0))
            except BlockingIOError:
                f.close()
                continue
            claimed = path.with_name(f".claimed-{new_id()}")
            try:
                os.rename(path, claimed)  # only one replica wins a file
            except FileNotFoundError:
                f.close()
                continue
            for line in f.read().splitlines():
                if line.strip():
                    try:
                        events.append(UsageEvent.model_validate_json(line))
                    except ValueError:
                        log.error("skipping an unreadable spilled usage event in %s", path.name)
            self._claims.append((claimed, f))
        self._claimed_events = len(events)
        if events:
            log.info("sending %d usage events spilled by an earlier run", len(events))
        return events

    def _release_claims(self) -> None:
        for path, f in self._claims:
            path.unlink(missing_ok=True)
            f.close()
        self._claims.clear()
