"""Routing questions the edge gave up on, handed back to the router so it releases what it admitted.

When ``router_client.decide`` ends without an answer (no reply in time, the router's error, the client
gone), the router may still admit that question: it may be held in a frozen NATS or router and arrive
later, or it was admitted and only the reply was lost. Either way capacity would be reserved for a
request nobody serves, and its admission lease would end as a billed "abandoned" event. So the edge
tells the routers (request id, attempt): one of them marks the question given up and releases an
admission already made, in one atomic step (``llmgw_router.store.GIVE_UP_LUA``); a copy of the question
arriving after that is refused. docs/reliability.md ("Questions the edge gave up on") has the argument.

The give-up is asked, not just published: a core NATS message to a queue group with nobody subscribed
right now (the routers restarting, NATS away) would vanish. Each is asked again, backing off, until a
router confirms or the question's admission lease would have expired anyway (``routing.lease_s``). This
runs off the hot path, in tasks of its own, and only for questions that went unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from llmgw_common import subjects
from llmgw_common.messages import AdmissionGiveUp
from llmgw_common.nats_conn import request

log = logging.getLogger("llmgw.edge.give_ups")

MAX_PENDING = 10_000  # give-ups still waiting for a router: beyond this, the abandoned-lease path takes over
FIRST_PAUSE_S = 0.2
MAX_PAUSE_S = 2.0
ASK_TIMEOUT_S = 2.0


class GiveUps:
    def __init__(self, nc, lease_s: Callable[[], float]):
        self.nc = nc
        self.lease_s = lease_s  # after this the router's reaper has taken the admission: too late to release
        self._tasks: set[asyncio.Task] = set()

    def send(self, request_id: str, attempt: int) -> None:
        """Never blocks: the give-up is delivered by a task of its own."""
        if len(self._tasks) >= MAX_PENDING:
            log.warning("too many routing questions given up at once: %s left to its admission lease", request_id)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(AdmissionGiveUp(request_id=request_id,
                                                                                    attempt=attempt)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _deliver(self, give_up: AdmissionGiveUp) -> None:
        lease_s = self.lease_s()
        until = time.monotonic() + lease_s
        pause = FIRST_PAUSE_S
        while True:
            try:
                await request(self.nc, subjects.ROUTER_GIVE_UP, give_up, AdmissionGiveUp, ASK_TIMEOUT_S)
                return
            except Exception:  # no router, NATS away, or the router's Redis away (its error reply): again
                pass
            if time.monotonic() + pause > until:
                log.warning("no router confirmed the give-up of %s (attempt %d) within %gs: its admission, if "
                            "any, ends with its lease", give_up.request_id, give_up.attempt, lease_s)
                return
            await asyncio.sleep(pause)
            pause = min(MAX_PAUSE_S, pause * 2)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
