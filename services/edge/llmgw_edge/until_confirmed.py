"""What the edge must get through to a router, sent off the request's path until a router confirms it.

Give-ups (``give_ups.py``) and capacity give-backs (``lease_client.py``) release capacity the routers
reserved. A core NATS message to a queue group with nobody subscribed right now (the routers restarting,
NATS away) would vanish, so they are asked, not published: one task sends what is pending, a batch at a
time, and asks again, backing off, until a router confirms each. An item is dropped at its ``until``: by
then the router's reaper has taken what it would release anyway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FIRST_PAUSE_S = 0.2
MAX_PAUSE_S = 2.0
MAX_PENDING = 100_000  # beyond this, an item is left to the router's reaper


class UntilConfirmed(Generic[K, V]):
    def __init__(self, name: str, deliver: Callable[[list[tuple[K, V]]], Awaitable[Iterable[K]]], batch: int,
                 on_expired: Callable[[int], None] | None = None):
        self.name = name
        self.deliver = deliver  # sends a batch; the keys a router confirmed (raises: none confirmed)
        self.batch = batch
        self.on_expired = on_expired  # told how many were dropped unconfirmed
        self._pending: dict[K, tuple[V, float]] = {}  # key -> (item, until when: monotonic)
        self._sender: asyncio.Task | None = None

    def add(self, key: K, item: V, until: float) -> bool:
        """Never blocks: the sender task delivers it. False: too many pending, left to the reaper."""
        if len(self._pending) >= MAX_PENDING:
            return False
        self._pending.setdefault(key, (item, until))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_pending(), name=self.name)
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _send_pending(self) -> None:
        pause = FIRST_PAUSE_S
        while self._pending:
            self._drop_expired()
            batch = [(key, item) for key, (item, _until) in list(self._pending.items())[:self.batch]]
            if not batch:
                return
            try:
                confirmed = set(await self.deliver(batch))
            except Exception:  # noqa: BLE001 - no router, NATS away, or the router's Redis away: again, later
                confirmed = set()
            for key in confirmed:
                self._pending.pop(key, None)
            if len(confirmed) < len(batch):
                await asyncio.sleep(pause)
                pause = min(MAX_PAUSE_S, pause * 2)
            else:
                pause = FIRST_PAUSE_S

    def _drop_expired(self) -> None:
        now = time.monotonic()
        expired = [key for key, (_item, until) in self._pending.items() if until <= now]
        for key in expired:
            del self._pending[key]
        if expired and self.on_expired is not None:
            self.on_expired(len(expired))

    async def close(self, timeout: float = 0.0) -> None:
        """At shutdown: what is pending goes if a router confirms it within ``timeout``; the rest is dropped."""
        if self._sender is None or self._sender.done():
            return
        if timeout > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), timeout)
            except TimeoutError:
                pass
        self._sender.cancel()
