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

import logging
import time
from typing import Callable

from llmgw_common import subjects
from llmgw_common.messages import AdmissionGiveUp, AdmissionGiveUps
from llmgw_common.nats_conn import request

from .until_confirmed import UntilConfirmed

log = logging.getLogger("llmgw.edge.give_ups")

BATCH = 500  # questions per message
ASK_TIMEOUT_S = 2.0

Question = tuple[str, int]  # (request id, attempt)


class GiveUps:
    def __init__(self, nc, lease_s: Callable[[], float]):
        self.nc = nc
        self.lease_s = lease_s  # after this the router's reaper has taken the admission: too late to release
        self._queue: UntilConfirmed[Question, None] = UntilConfirmed("give-ups", self._deliver, BATCH,
                                                                      on_expired=_expired)

    def send(self, request_id: str, attempt: int) -> None:
        """Never blocks: the sender task delivers it."""
        if not self._queue.add((request_id, attempt), None, time.monotonic() + self.lease_s()):
            log.warning("too many routing questions given up at once: %s left to its admission lease", request_id)

    @property
    def pending(self) -> int:
        return self._queue.pending

    async def _deliver(self, batch: list[tuple[Question, None]]) -> list[Question]:
        questions = [q for q, _ in batch]
        message = AdmissionGiveUps(items=[AdmissionGiveUp(request_id=r, attempt=a) for r, a in questions])
        await request(self.nc, subjects.ROUTER_GIVE_UP, message, AdmissionGiveUps, ASK_TIMEOUT_S)
        return questions  # one answer confirms the whole message

    async def close(self) -> None:
        await self._queue.close()


def _expired(count: int) -> None:
    log.warning("no router confirmed %d give-ups in time: their admissions, if any, end with their leases", count)
