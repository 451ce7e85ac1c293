"""The usage service's way to ClickHouse: attached in the background, never a reason not to start.

ClickHouse is one of the usage service's two projections (the Redis windows are the other, and the router
needs those). So the service starts without it. While ClickHouse is not attached, the durable consumer
pulls nothing (its ``gate`` is closed: an event is acknowledged only once ClickHouse stored it) and the
``WindowFollower`` keeps the windows current from the stream itself. Meanwhile ``ClickHouseLink`` tries
to attach the store every ``retry_s``: connect (chDB: lock its directory), read the applied schema
version without any DDL, and stay only when it is the version this code needs. While it is behind, the
service says so (its health checks and the queries' answer): "waiting for schema N, have M: run llmgw
migrate". The migrations are the job's (``migrate.py``), never a replica's.

Once attached, the inserts a crash cut short are finished (``ClickHouseProjection.recover``), then the
follower stops and the gate opens. ClickHouse lost later (``lost``: a batch's insert could not reach the
server) closes the gate again, detaches the store and starts over.
"""

from __future__ import annotations

import asyncio
import logging

from llmgw_common.health import CheckFailed

from .projection import ClickHouseProjection
from .store import ClickHouseStore, SchemaBehind, StoreBusyError
from .windows_follower import WindowFollower

log = logging.getLogger(__name__)

RETRY_S = 2.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (SchemaBehind, StoreBusyError)):
        return str(exc)
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"ClickHouse unavailable: {type(exc).__name__}{': ' + text if text else ''}"


class ClickHouseLink:
    def __init__(self, store: ClickHouseStore, projection: ClickHouseProjection,
                 follower: WindowFollower | None = None, retry_s: float = RETRY_S):
        self.store = store
        self.projection = projection
        self.follower = follower
        self.retry_s = retry_s
        self.gate = asyncio.Event()  # set while attached: the durable consumer pulls
        self._following: asyncio.Task | None = None
        self._detaching: asyncio.Task | None = None
        self.attached = False
        self.behind: SchemaBehind | None = None  # ClickHouse answered, with an older schema
        self.detail = "not attached yet"
        projection.paused = self.detail  # no inserts before the schema is known to be there

    def _waiting(self, reason: str) -> None:
        self.detail = self.store.unavailable = self.projection.paused = reason

    async def try_once(self) -> bool:
        """One attempt; True once attached (and the journal recovered)."""
        if self.attached:
            return True
        try:
            status = await self.store.attach()
        except Exception as exc:  # noqa: BLE001 - every failure is the same answer: wait and try again
            self.behind = exc if isinstance(exc, SchemaBehind) else None
            reason = _reason(exc)
            if reason != self.detail:  # log a change, not every attempt
                log.warning("usage service: %s; the Redis windows are kept current meanwhile, ClickHouse "
                            "batches wait in the stream", reason)
            self._waiting(reason)
            return False
        try:
            await self.projection.recover()  # inserts a crash cut short, before anything new
        except Exception as exc:  # noqa: BLE001 - attached, but not usable yet: the next attempt recovers
            self._waiting(_reason(exc))
            log.warning("usage service: journal recovery failed: %s", self.detail)
            return False
        self.attached, self.behind = True, None
        self.detail = status.describe()
        self.projection.paused = None
        await self._stop_following()
        self.gate.set()
        log.info("usage service: ClickHouse attached (%s)", self.detail)
        return True

    def lost(self, exc: BaseException) -> None:
        """An insert could not reach ClickHouse (a server gone): detach, follow the stream, attach again."""
        if not self.attached:
            return
        self.attached = False
        self.gate.clear()
        self._waiting(_reason(exc))
        log.warning("usage service: %s; the Redis windows are kept current meanwhile, ClickHouse batches wait "
                    "in the stream", self.detail)
        self._detaching = asyncio.get_running_loop().create_task(self._detach())

    async def _detach(self) -> None:
        try:
            await self.store.detach()
        except Exception as exc:  # noqa: BLE001 - closing a connection that failed: nothing else to do
            log.warning("usage service: detaching ClickHouse: %s: %s", type(exc).__name__, exc)

    async def keep_trying(self) -> None:
        """Attach while not attached, following the stream meanwhile (a background loop of the service)."""
        try:
            while True:
                if not await self.try_once() and self.follower is not None and self._following is None:
                    self._following = asyncio.get_running_loop().create_task(self.follower.run(),
                                                                             name="usage-windows-follower")
                await asyncio.sleep(self.retry_s)
        finally:
            await self._stop_following()

    async def _stop_following(self) -> None:
        task, self._following = self._following, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def schema_probe(self) -> str:
        """The readiness check: fails only while the schema is known to be behind (unknown while
        ClickHouse does not answer: that is ``probe``'s failure)."""
        if self.behind is not None:
            raise CheckFailed(str(self.behind))
        return self.detail if self.attached else "unknown until ClickHouse answers"

    async def probe(self) -> str:
        """The health check: attached and answering, else why not."""
        if not self.attached:
            raise CheckFailed(self.detail)
        await self.store.ping()
        return self.detail
