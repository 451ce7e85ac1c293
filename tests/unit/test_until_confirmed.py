"""The edge's sender of what a router must confirm (give-ups, capacity give-backs): asked again until
confirmed, dropped at its deadline."""

from __future__ import annotations

import asyncio
import time

from llmgw_edge import until_confirmed
from llmgw_edge.until_confirmed import UntilConfirmed


async def test_what_is_not_confirmed_is_asked_again_and_what_expires_is_dropped(monkeypatch):
    monkeypatch.setattr(until_confirmed, "FIRST_PAUSE_S", 0.01)
    asked: list[list[str]] = []
    expired: list[int] = []

    async def deliver(batch):
        asked.append([k for k, _ in batch])
        if len(asked) == 1:
            raise ConnectionError("no router")  # nothing confirmed
        return [k for k, _ in batch if k != "never"]  # a router confirms all but one

    queue = UntilConfirmed("t", deliver, batch=2, on_expired=expired.append)
    now = time.monotonic()
    assert queue.add("a", 1, now + 60) and queue.add("b", 2, now + 60) and queue.add("never", 3, now + 0.2)
    for _ in range(200):
        if queue.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert queue.pending == 0 and expired == [1]
    assert asked[0] == ["a", "b"] and asked[1] == ["a", "b"] and asked[2] == ["never"]
    await queue.close()
