"""Asks the routers for capacity leases and gives them back, over NATS request/reply (``core/capacity.py``).

A question for a lease is asked again, like a routing question, when its router replica died holding it or
none is subscribed yet, within ``decide_timeout_s`` in all; each try has its own lease id, and a try that
got no answer is given back by id (a router may still get it once a frozen NATS or router resumes: a lease
given back first is never granted, ``capacity_leases.GIVE_BACK_LUA``).

Give-backs never block the request that ends a lease: one task sends what is pending and asks again,
backing off, until a router confirms; a give-back is dropped once the reaper would have taken its lease
anyway (``lease_ttl_s`` + ``routing.abandoned_after_s``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import msgspec
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from llmgw_common import subjects
from llmgw_common.capacity import LeaseAsk, LeaseGrant, LeaseReturn, LeaseReturned, LeaseUse, LeaseUses
from llmgw_common.config import RoutingConfig
from llmgw_common.ids import new_id
from llmgw_common.nats_conn import RemoteError, request

from .core.capacity import RouterUnavailable
from .until_confirmed import UntilConfirmed

log = logging.getLogger("llmgw.edge.leases")

TRY_SHARE = 0.4  # of decide_timeout_s for one try
MIN_TRY_S = 0.25
NO_RESPONDER_PAUSE_S = 0.05
GIVE_BACK_TIMEOUT_S = 2.0
BATCH = 64  # give-backs asked at once


class LeaseClient:
    def __init__(self, nc, routing: Callable[[], RoutingConfig]):
        self.nc = nc
        self.routing = routing
        self._give_backs: UntilConfirmed[str, LeaseReturn] = UntilConfirmed("lease-give-backs", self._deliver, BATCH)
        self._publishing: set[asyncio.Task] = set()

    async def ask(self, ask: LeaseAsk) -> LeaseGrant:
        timeout = self.routing().decide_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RouterUnavailable(f"no router answered within {timeout:g}s")
            try:
                return await request(self.nc, subjects.ROUTER_LEASE_GRANT, ask, LeaseGrant,
                                     min(left, max(MIN_TRY_S, timeout * TRY_SHARE)))
            except NatsTimeoutError:  # its replica died holding it, or it is frozen: a new id, this one back
                self.give_back(LeaseReturn(lease_id=ask.lease_id))
                ask = msgspec.structs.replace(ask, lease_id=new_id())
            except NoRespondersError:  # no router subscribed (restarting), or NATS away
                await asyncio.sleep(min(NO_RESPONDER_PAUSE_S, max(0.0, deadline - time.monotonic())))
            except RemoteError as exc:  # the router's Redis is away: nothing was granted
                raise RouterUnavailable(str(exc)) from None
            except Exception as exc:
                if self.nc.is_connected:
                    raise RouterUnavailable(type(exc).__name__) from None
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def give_back(self, back: LeaseReturn) -> None:
        """Never blocks: the sender task delivers it."""
        routing = self.routing()
        if not self._give_backs.add(back.lease_id, back, time.monotonic() + routing.lease_ttl_s + routing.lease_s):
            log.warning("too many capacity leases to give back: %s left to the reaper", back.lease_id)

    def report_use(self, uses: list[LeaseUse]) -> None:
        """What was admitted from live leases, fire and forget: only the windows' views read it."""
        task = asyncio.get_running_loop().create_task(self._publish_uses(LeaseUses(uses=uses).encode()))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish_uses(self, data: bytes) -> None:
        try:
            await self.nc.publish(subjects.ROUTER_LEASE_USED, data)
        except Exception:  # NATS away: the views show the lease whole until its give-back
            pass

    @property
    def pending(self) -> int:
        return self._give_backs.pending

    async def _deliver(self, batch: list[tuple[str, LeaseReturn]]) -> list[str]:
        answers = await asyncio.gather(*(request(self.nc, subjects.ROUTER_LEASE_RETURN, back, LeaseReturned,
                                                 GIVE_BACK_TIMEOUT_S) for _id, back in batch), return_exceptions=True)
        return [lease_id for (lease_id, _back), answer in zip(batch, answers) if not isinstance(answer, BaseException)]

    async def close(self, timeout: float = 2.0) -> None:
        """At shutdown: what is pending goes back if a router answers within ``timeout``."""
        await self._give_backs.close(timeout)
