"""Keep the admission leases of streams still running from expiring into "abandoned" events.

The router leases every admission (``llmgw_common.leases``); a long stream outlives its lease unless the
edge that relays it says so. The gateway keeps the lease members of its running streams
(``Gateway.running``); this loop extends them every ``RENEW_EVERY_S`` (or a third of the lease, if shorter).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from llmgw_common import subjects
from llmgw_common.leases import RENEW_EVERY_S
from llmgw_common.messages import LeaseRenewal

log = logging.getLogger("llmgw.edge")

MAX_MEMBERS = 10_000  # one message stays bounded however many streams run


async def renew_leases(nc, running: set[str], lease_s: Callable[[], float]) -> None:
    """Runs until cancelled; ``lease_s()``: the config's lease length now (it may be reloaded)."""
    while True:
        extend_s = lease_s()
        await asyncio.sleep(min(RENEW_EVERY_S, extend_s / 3))  # several renewals per lease: one may be lost
        if running:
            try:
                await nc.publish(subjects.ROUTER_LEASE_RENEW,
                                 LeaseRenewal(members=sorted(running)[:MAX_MEMBERS], extend_s=extend_s).encode())
            except Exception as exc:  # NATS away: the next round tries again
                log.warning("cannot renew admission leases (%s)", type(exc).__name__)
