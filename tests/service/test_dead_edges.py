"""The routers tell a dead edge process from a live, frozen or reconnecting one (``llmgw_router.dead_edges``),
on a real nats-server: gone = "no responders" on its alive subject, for ``GONE_FOR_S`` in a row."""

from __future__ import annotations

import pytest

from llmgw_common import subjects
from llmgw_common.nats_conn import connect_nats
from llmgw_router import dead_edges
from llmgw_router.dead_edges import DeadEdges

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_edge_is_gone_once_nobody_answered_for_it_for_a_while(infra):
    nc = await connect_nats(infra.nats_url, "test-router")
    edge_nc = await connect_nats(infra.nats_url, "test-edge")
    try:
        async def answer(msg):
            await msg.respond(b"")

        await edge_nc.subscribe(subjects.edge_alive("edge-1-ALIVE"), cb=answer)
        await edge_nc.flush()
        clock = Clock()
        edges = DeadEdges(clock)
        assert await edges.gone(nc, {"edge-1-ALIVE", "edge-2-DEAD"}) == set()  # not for long enough yet
        clock.now += dead_edges.GONE_FOR_S
        assert await edges.gone(nc, {"edge-1-ALIVE", "edge-2-DEAD"}) == {"edge-2-DEAD"}
        await edge_nc.close()  # the live one's process ends: its subscription is gone with its connection
        assert await edges.gone(nc, {"edge-1-ALIVE"}) == set()  # just now: it may be reconnecting
        clock.now += dead_edges.GONE_FOR_S
        assert await edges.gone(nc, {"edge-1-ALIVE"}) == {"edge-1-ALIVE"}
    finally:
        await nc.close()
        if not edge_nc.is_closed:
            await edge_nc.close()


async def test_an_edge_that_answers_in_between_starts_over(infra):
    nc = await connect_nats(infra.nats_url, "test-router")
    edge_nc = await connect_nats(infra.nats_url, "test-edge")
    try:
        clock = Clock()
        edges = DeadEdges(clock)
        assert await edges.gone(nc, {"edge-3"}) == set()  # not subscribed yet (reconnecting)

        async def answer(msg):
            await msg.respond(b"")

        sub = await edge_nc.subscribe(subjects.edge_alive("edge-3"), cb=answer)
        await edge_nc.flush()
        clock.now += dead_edges.GONE_FOR_S
        assert await edges.gone(nc, {"edge-3"}) == set()  # back: alive
        await sub.unsubscribe()
        await edge_nc.flush()
        assert await edges.gone(nc, {"edge-3"}) == set()  # gone again, from now on
        clock.now += dead_edges.GONE_FOR_S - 0.5
        assert await edges.gone(nc, {"edge-3"}) == set()
    finally:
        await nc.close()
        await edge_nc.close()


async def test_an_edge_that_does_not_answer_in_time_is_not_taken_for_dead(infra):
    """A frozen edge (SIGSTOP) keeps its connection and subscription: its question times out."""
    nc = await connect_nats(infra.nats_url, "test-router")
    edge_nc = await connect_nats(infra.nats_url, "test-edge")
    try:
        async def never(msg):
            return None  # frozen: never answers

        await edge_nc.subscribe(subjects.edge_alive("edge-4"), cb=never)
        await edge_nc.flush()
        clock = Clock()
        edges = DeadEdges(clock)
        for _ in range(2):
            assert await edges.gone(nc, {"edge-4"}) == set()
            clock.now += dead_edges.GONE_FOR_S
    finally:
        await nc.close()
        await edge_nc.close()
