"""Which edge processes are gone, asked over NATS: their capacity leases need not wait for their requests.

A lease its edge never gave back is normally reaped ``routing.abandoned_after_s`` after it ended: the edge
may be cut off from NATS while it still serves requests admitted from it, and their usage events, spilled to
disk, come later. An edge process that died serves nothing more: its leases can go back as soon as they end
(issue 20: "an edge killed while holding a lease: its capacity is back within lease_ttl_s + one bucket").

Every edge answers on ``subjects.edge_alive(<its instance>)``. NATS answers "no responders" at once for a
subscription that is gone, which happens when the edge's connection closed: the process died (a frozen or
cut-off edge keeps its connection until nats-server's pings give up on it, and its question times out
instead: it is left to the reaper's grace). An edge also loses its subscription for the moment it takes to
reconnect after a NATS restart, so an edge is gone only once it has answered "no responders" to every
question for ``GONE_FOR_S``, asked while this router's own connection was up all along.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from nats.errors import NoRespondersError

from llmgw_common import subjects

GONE_FOR_S = 2.0  # several of an edge's reconnect attempts (nats_conn.RECONNECT_WAIT_S: 0.5 s)
ASK_TIMEOUT_S = 0.5


class DeadEdges:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._gone_since: dict[str, float] = {}

    async def gone(self, nc, edges: set[str]) -> set[str]:
        """Those of ``edges`` whose process is gone; the others are alive or cannot be told now."""
        if nc is None or not nc.is_connected:
            self._gone_since.clear()  # what was seen before our own connection dropped says nothing now
            return set()
        answers = await asyncio.gather(*(self._ask(nc, edge) for edge in edges))
        now = self._clock()
        dead = set()
        for edge, no_responders in zip(edges, answers):
            if not no_responders:
                self._gone_since.pop(edge, None)
                continue
            since = self._gone_since.setdefault(edge, now)
            if now - since >= GONE_FOR_S:
                dead.add(edge)
        for edge in [e for e in self._gone_since if e not in edges]:  # its leases went back: forget it
            del self._gone_since[edge]
        return dead

    @staticmethod
    async def _ask(nc, edge: str) -> bool:
        """True when NATS says nobody answers for ``edge``."""
        try:
            await nc.request(subjects.edge_alive(edge), b"", timeout=ASK_TIMEOUT_S)
        except NoRespondersError:
            return True
        except Exception:  # a timeout (frozen edge, frozen NATS) or a dropped connection: not known
            return False
        return False
