"""Routing questions the edge gave up on, handed back to the router so it releases what it admitted.

When ``router_client.decide`` ends without an answer (no reply in time, the router's error, the client
gone), the router may still admit that question: it may be held in a frozen NATS or router and arrive
later, or it was admitted and only the reply was lost. Either way capacity would be reserved for a
request nobody serves, and its admission lease would end as a billed "abandoned" event. So the edge
tells the routers (request id, attempt): a router marks each question given up and releases an
admission already made, in one atomic step (``llmgw_router.store.GIVE_UP_LUA``); a copy of the question
arriving after that is refused. docs/reliability.md ("Questions the edge gave up on") has the argument.

The give-ups are asked, not just published: a core NATS message to a queue group with nobody subscribed
right now (the routers restarting, NATS away) would vanish. One task sends what is pending, up to
``BATCH`` questions a message, and asks again, backing off, until a router confirms; a question is
dropped once its admission lease would have expired anyway (``routing.abandoned_after_s``). Off the hot
path: only questions that went unanswered come here, and an outage costs one message per pause, however
many requests failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from llmgw_common import subjects
from llmgw_common.messages import AdmissionGiveUp, AdmissionGiveUps
from llmgw_common.nats_conn import request

log = logging.getLogger("llmgw.edge.give_ups")

BATCH = 500  # questions per message
MAX_PENDING = 100_000  # beyond this, a question is left to its admission lease
FIRST_PAUSE_S = 0.2
MAX_PAUSE_S = 2.0
ASK_TIMEOUT_S = 2.0


class GiveUps:
    def __init__(self, nc, lease_s: Callable[[], float]):
        self.nc = nc
        self.lease_s = lease_s  # after this the router's reaper has taken the admission: too late to release
        self._pending: dict[tuple[str, int], float] = {}  # (request id, attempt) -> until when (monotonic)
        self._sender: asyncio.Task | None = None

    def send(self, request_id: str, attempt: int) -> None:
        """Never blocks: the sender task delivers it."""
        if len(self._pending) >= MAX_PENDING:
            log.warning("too many routing questions given up at once: %s left to its admission lease", request_id)
            return
        self._pending.setdefault((request_id, attempt), time.monotonic() + self.lease_s())
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_pending(), name="give-ups")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _send_pending(self) -> None:
        pause = FIRST_PAUSE_S
        while self._pending:
            self._drop_expired()
            batch = list(self._pending)[:BATCH]
            if not batch:
                return
            message = AdmissionGiveUps(items=[AdmissionGiveUp(request_id=r, attempt=a) for r, a in batch])
            try:
                await request(self.nc, subjects.ROUTER_GIVE_UP, message, AdmissionGiveUps, ASK_TIMEOUT_S)
            except Exception:  # no router, NATS away, or the router's Redis away (its error reply): again
                await asyncio.sleep(pause)
                pause = min(MAX_PAUSE_S, pause * 2)
                continue
            for question in batch:
                self._pending.pop(question, None)
            pause = FIRST_PAUSE_S

    def _drop_expired(self) -> None:
        now = time.monotonic()
        expired = [q for q, until in self._pending.items() if until <= now]
        for q in expired:
            del self._pending[q]
        if expired:
            log.warning("no router confirmed %d give-ups in time: their admissions, if any, end with their "
                        "leases", len(expired))

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
