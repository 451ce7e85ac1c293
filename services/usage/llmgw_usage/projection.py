"""The ClickHouse projection of the usage stream: every event id goes into ``usage_events`` at most once.

Why "at most once" and not "ReplacingMergeTree collapses it later": the
materialized views on ``usage_events`` (``usage_minute``, ``request_log``) fire
on every insert, duplicates included, so one duplicate row would be counted
twice in the rollups forever, while ``usage_events FINAL`` counts it once.
Delivery is at least once (a lost ack, a crash between insert and ack, a
replay, a re-imported file, a consumer re-created from the start), so every
insert is guarded.

Per batch (``ClickHouseProjection.project``):

1. **claim** every event id in Redis, in one Lua call:
   ``SET llmgw:chclaim:<table uuid>:<id> <owner> NX PX <lease>``. An id held by
   another owner is *busy*: another replica (or a replay) is inserting it right
   now. It is not inserted here; the caller leaves its message unacknowledged
   so it comes back once that insert has committed or failed.
2. **check** which claimed ids ``usage_events`` already holds (one query,
   bounded by the batch's time range so it reads a few granules), and
3. **insert** only the others (bodies first, then the events: one insert, the
   views' rows come with it). Steps 2 and 3 run as one job on the store's
   single ClickHouse thread, so two batches of this process never interleave
   between check and insert either.
4. **release** the claims (compare-and-delete).

While 2-3 run the claims are renewed every ``lease / 3``, so a slow insert keeps
them. A replica that dies holding claims leaves them to lapse after the lease;
whoever claims the ids next checks ClickHouse first (step 2), so an insert that
committed just before the crash is never repeated. With chDB the owner is the
data directory itself (one process at a time can hold it), so a usage service
restarted after a crash takes its predecessor's claims back at once. The
remaining hole is a process frozen (not dead) for longer than the lease in the
middle of an insert while another replica takes over its events; it cannot
happen with chDB (one process per data directory) and is the price of not
having transactions across Redis and ClickHouse.

Claims are scoped by the UUID of the ``usage_events`` table, so a new ClickHouse
(a fresh chDB directory, a re-created table) shares no state with an old one.

With chDB there are no claims at all: the store holds an exclusive lock on the
data directory and runs check + insert as one job on its one thread, so no
other writer exists to race with (``llmgw replay`` goes through the service,
or opens the directory only when the service is gone). That saves two Redis
round trips per batch on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from llmgw_common import redis_keys

from .domain import EventRow
from .store import ClickHouseUnavailable, InsertRejected

log = logging.getLogger(__name__)

CLAIM_PREFIX = redis_keys.CLAIM_PREFIX
CLAIM_LEASE_MS = 30_000
# ARGV: owner, lease_ms, key prefix, id... -> per id 1 (claimed by us) or 0 (held by another owner)
CLAIM_LUA = """
local out = {}
for i = 4, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = 1
  elseif redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: owner, lease_ms (0: release), key prefix, id...; only keys still held by owner are touched
RENEW_OR_RELEASE_LUA = """
local n = 0
for i = 4, #ARGV do
  local key = ARGV[3] .. ARGV[i]
  if redis.call('GET', key) == ARGV[1] then
    if ARGV[2] == '0' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[2]) end
    n = n + 1
  end
end
return n
"""

# ids per Lua call: keeps one script run short, so it never stalls Redis for the router
CLAIM_CHUNK = 2000


@dataclass
class ProjectionResult:
    inserted: int = 0  # new in usage_events now
    already: int = 0  # were there before (redelivery, replay, re-import)
    busy: set[str] = field(default_factory=set)  # ids another owner is inserting right now


class ClickHouseProjection:
    """Idempotent writer of ``usage_events`` (and with it every view on it); see the module doc."""

    def __init__(self, store, redis, lease_ms: int = CLAIM_LEASE_MS, exclusive: bool | None = None):
        self._store = store
        self._redis = redis
        self._lease_ms = lease_ms
        # no claims needed when this store is the only possible writer (chDB)
        self.exclusive = bool(getattr(store, "exclusive_owner", None)) if exclusive is None else exclusive
        # chDB: one owner per data directory (see ClickHouseStore.exclusive_owner), so a restart after a
        # crash takes its own claims back at once; a server: one owner per process
        self.owner = (getattr(store, "exclusive_owner", None)
                      or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}")
        self._claim = redis.register_script(CLAIM_LUA)
        self._renew_or_release = redis.register_script(RENEW_OR_RELEASE_LUA)
        self._prefix: str | None = None
        self._failed_insert = False  # an insert raised: its journal may hold a half-done insert
        # why batches may not be inserted now (the usage service's ``ClickHouseLink`` until it attached the
        # store and recovered its journal); None: they may
        self.paused: str | None = None

    async def _key_prefix(self) -> str:
        if self._prefix is None:
            self._prefix = f"{CLAIM_PREFIX}{await self._store.identity()}:"
        return self._prefix

    async def _call(self, script, lease_ms: int, ids: Sequence[str]) -> list:
        prefix = await self._key_prefix()
        out: list = []
        for i in range(0, len(ids), CLAIM_CHUNK):
            res = await script(keys=[], args=[self.owner, lease_ms, prefix, *ids[i : i + CLAIM_CHUNK]])
            out.extend(res if isinstance(res, list) else [res])
        return out

    async def claim(self, ids: Sequence[str]) -> tuple[list[str], set[str]]:
        """(ids claimed by us, ids busy elsewhere)."""
        flags = await self._call(self._claim, self._lease_ms, ids)
        mine = [i for i, f in zip(ids, flags) if int(f) == 1]
        return mine, {i for i, f in zip(ids, flags) if int(f) != 1}

    async def release(self, ids: Sequence[str]) -> None:
        if ids:
            await self._call(self._renew_or_release, 0, ids)

    async def _keep_claimed(self, ids: Sequence[str]) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self._call(self._renew_or_release, self._lease_ms, ids)
            except Exception as exc:  # noqa: BLE001 - the next turn tries again; the lease is 3 turns long
                log.warning("could not renew ClickHouse insert claims: %s", exc)

    async def _insert(self, rows: Sequence[EventRow]) -> int:
        try:
            return await self._store.insert_new(rows)
        except (InsertRejected, ClickHouseUnavailable):
            raise  # nothing of it was stored (or even tried) and its journal is gone: nothing to recover
        except Exception:
            self._failed_insert = True
            raise

    async def recover(self) -> int:
        """Finish the inserts a crash cut short (the store's journal); call before consuming.

        An insert whose rows landed (some of them, or all without its views'
        rows) is repeated with its own token: ClickHouse writes only the blocks a
        table is missing. One whose rows did not land is forgotten: its events
        were never acknowledged, so the stream delivers them again (and a replay
        batch was answered with an error). Returns how many journaled inserts
        there were.
        """
        self._failed_insert = False
        pending = await self._store.pending_inserts()
        for insert in pending:
            if await self._store.token_landed(insert):
                await self._store.repeat_insert(insert)
                log.warning("completed an insert of %d usage events that a crash had cut short", len(insert.stamps))
            else:
                await self._store.forget_insert(insert)
                log.warning("an insert of %d usage events was cut short before any of it was stored; they are "
                            "inserted when they come back", len(insert.stamps))
        return len(pending)

    async def project(self, rows: Sequence[EventRow], dry_run: bool = False) -> ProjectionResult:
        """Insert the events ``usage_events`` does not hold yet (ids unique within ``rows``).

        ``dry_run``: only count what would be inserted (no claims, no writes).
        Raises ``InsertRejected`` when ClickHouse refused the rows (nothing stored).
        """
        result = ProjectionResult()
        if not rows:
            return result
        if self.paused is not None:
            raise ClickHouseUnavailable(self.paused)
        if self._failed_insert and not dry_run:  # ClickHouse answers again: finish what the failure left
            await self.recover()
        if dry_run:
            existing = await self._store.existing_ids(rows)
            result.already = len(existing)
            result.inserted = len(rows) - len(existing)
            return result
        if self.exclusive:
            result.inserted = await self._insert(rows)
            result.already = len(rows) - result.inserted
            return result
        mine, result.busy = await self.claim([row.id for row in rows])
        if not mine:
            return result
        mine_set = set(mine)
        todo = [row for row in rows if row.id in mine_set]
        keeper = asyncio.create_task(self._keep_claimed(mine), name="usage-claim-renewal")
        try:
            inserted = await self._insert(todo)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            try:
                await self.release(mine)
            except Exception as exc:  # noqa: BLE001 - they lapse after the lease anyway
                log.warning("could not release ClickHouse insert claims: %s", exc)
        result.inserted = inserted
        result.already = len(todo) - inserted
        return result


async def project_leaving_out_refused(projection: ClickHouseProjection, rows: Sequence[EventRow],
                                      dry_run: bool = False) -> ProjectionResult:
    """``projection.project(rows)``, but rows ClickHouse refuses (as the live ingest dead-letters them) are
    found by halving and left out: a replay never stores them and never fails on them."""
    try:
        return await projection.project(rows, dry_run=dry_run)
    except InsertRejected as exc:
        if len(rows) <= 1:
            log.warning("replay: ClickHouse refuses event %s; left out: %s", rows[0].id if rows else "-",
                        str(exc)[:200])
            return ProjectionResult()
    mid = len(rows) // 2
    first = await project_leaving_out_refused(projection, rows[:mid], dry_run)
    second = await project_leaving_out_refused(projection, rows[mid:], dry_run)
    return ProjectionResult(first.inserted + second.inserted, first.already + second.already,
                            first.busy | second.busy)
