"""The usage service's way to ClickHouse: attached in the background, never a reason not to start.

ClickHouse is one of the usage service's two projections (the Redis windows are the other, and the router
needs those). So the service starts without it: the consumer runs at once, every batch goes to the
windows, and while ClickHouse is not attached the batch is left unacknowledged (``ingest.py``), to be
redelivered until it is stored. Meanwhile ``ClickHouseLink`` tries to attach the store every
``retry_s``: connect (chDB: lock its directory), read the applied schema version without any DDL, and
stay only when it is the version this code needs. While it is behind, the service says so (its health
check and the queries' answer): "waiting for schema N, have M: run llmgw migrate". The migrations are the
job's (``migrate.py``), never a replica's.

Once attached, the inserts a crash cut short are finished (``ClickHouseProjection.recover``) before the
projection takes batches again.
"""

from __future__ import annotations

import asyncio
import logging

from llmgw_common.health import CheckFailed

from .projection import ClickHouseProjection
from .store import ClickHouseStore, SchemaBehind, StoreBusyError

log = logging.getLogger(__name__)

RETRY_S = 2.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (SchemaBehind, StoreBusyError)):
        return str(exc)
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"ClickHouse unavailable: {type(exc).__name__}{': ' + text if text else ''}"


class ClickHouseLink:
    def __init__(self, store: ClickHouseStore, projection: ClickHouseProjection, retry_s: float = RETRY_S):
        self.store = store
        self.projection = projection
        self.retry_s = retry_s
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
        log.info("usage service: ClickHouse attached (%s)", self.detail)
        return True

    async def keep_trying(self) -> None:
        """Until attached (a background loop of the service)."""
        while not await self.try_once():
            await asyncio.sleep(self.retry_s)

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
