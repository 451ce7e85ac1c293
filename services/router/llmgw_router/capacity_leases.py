"""Capacity leases for routes with limits (issue 20): the router's side, in Redis (``main.Router.grant_lease``).

A lease grants one edge replica N requests on one route (provider + model, plus the caller's key when the
key has limits), with N times the request's estimate in tokens and cost, reserved in the live windows in
one atomic step across every scope and window it draws on. N is at most what every limit has left, so for
every limit: consumed + reserved by live leases <= limit, whatever the number of edges and routers.
docs/routing.md ("Leases for routes with limits") has the accounting, the invariant and a picture.

- ``grant``: reserve a lease (N = the edge's demand, or one request when what is left is small against the
  edges asking: that is the per-request admission, exact as ever); it is valid until the end of the
  shortest window bucket it draws on, and at most ``ttl_ms``.
- ``give_back``: the edge's return; what it did not admit from the lease goes back at once. The record
  stays (state ``returned``) until ``hold_ms`` later, for the events of the requests it did admit. A lease
  given back before it was granted (the edge's question went unanswered in time, and may still arrive from
  a frozen NATS or router) is marked ``given_up`` for ``hold_ms``: its grant, when it comes, is refused.
  ``hold_ms`` after a give-back the reaper returns what its requests never settled (their edge died before
  reporting them, or the attempt failed after the give-back): no capacity kept for requests nobody served.
- ``note_use``: what the edge admitted so far from a live lease, for the windows' views only (they show a
  live lease's used part, as the per-request admission showed each request, not what it holds unused).
- ``reap``: a lease its edge never returned (the edge died, or cannot reach NATS), ``grace_ms`` after it
  ended: what the usage service has not settled from it goes back; the record stays as a tombstone (state
  ``reaped``) for the longest window it drew on, and a later event of it counts in full. ``grace_ms`` must
  cover the requests the edge admitted from it still running and their events on the way (the admission
  leases' ``routing.abandoned_after_s`` is that horizon): reaped sooner, a partitioned edge's late events
  would count in full after their capacity was granted again, and a window could pass its limit.

The script is separate from the per-request ADMIT script on purpose (another change owns that one).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from llmgw_common import redis_keys
from llmgw_common.config import Limits
from llmgw_common.keys import KeyRecord
from llmgw_common.windows import SCOPES_KEY, model_scope, provider_scope, usd_to_nano

from .store import _LUA_WINDOWS, _WINDOW_ARGS, _key_args, _limit_args

# A lease's record: provider, scopes, month, at (s), n/tin/tout/cost reserved, applied_* (settled by usage
# events: written by the usage service, not yet), state live|returned|reaped.
_GIVE_BACK = """
local function give_back(lease, n, tin, tout, cost, now)
  local at = tonumber(redis.call('HGET', lease, 'at'))
  local month = redis.call('HGET', lease, 'month') or ''
  local scopes = {redis.call('HGET', lease, 'pscope'), redis.call('HGET', lease, 'mscope')}
  local ks = redis.call('HGET', lease, 'kscope') or ''
  if ks ~= '' then table.insert(scopes, ks) end
  for s = 1, #scopes do
    for w = 1, #wins do
      local seconds, bucket = wins[w][2], wins[w][3]
      local start = at - (at % bucket)
      if start + seconds + bucket > now then  -- a window still sums it
        local key = '$WINDOW_PREFIX' .. scopes[s] .. ':' .. bucket .. ':' .. start
        redis.call('HINCRBY', key, 'req', 0 - n)
        redis.call('HINCRBY', key, 'tin', 0 - tin)
        redis.call('HINCRBY', key, 'tout', 0 - tout)
        redis.call('HINCRBY', key, 'cost', 0 - cost)
      end
    end
  end
  if month ~= '' and redis.call('EXISTS', month) == 1 then
    redis.call('HINCRBY', month, 'req', 0 - n)
    redis.call('HINCRBY', month, 'tin', 0 - tin)
    redis.call('HINCRBY', month, 'tout', 0 - tout)
    redis.call('HINCRBY', month, 'cost', 0 - cost)
  end
end
"""

GRANT_LUA = _LUA_WINDOWS + """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local lease_id, edge, wanted, ttl_ms = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local grace_ms = tonumber(ARGV[6])  -- the reaper takes it this long after it ends, if its edge has not
local wins, i = read_windows(7)
local nw = #wins
local key_scope = ARGV[i]
local key_limits_at = i + 2
i = i + 2 + 3 * nw
local month_key, month_end, month_expire = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local month_limits = {tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])}
i = i + 6
local provider, pscope, mscope = ARGV[i], ARGV[i + 1], ARGV[i + 2]
local est_in, est_out, est_cost = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
local limits_at = i + 6
local est_tok = est_in + est_out

-- its edge gave it back before it got here (the question went unanswered in time): never granted
if redis.call('EXISTS', '$CAP_LEASE_PREFIX' .. lease_id) == 1 then return {0, 0, 'given back before it was granted'} end

-- a cooling or broken provider gets no lease: its requests go to the router one by one (the probe)
local cool = redis.call('PTTL', '$COOLDOWN_PREFIX' .. provider)
if cool > 0 then return {0, 0, 'cooling down after a 429'} end
if tonumber(redis.call('HGET', '$BREAKER_PREFIX' .. provider, 'open_until') or '0') > 0 then
  return {0, 0, 'circuit breaker not closed'}
end

local room = math.huge  -- requests every limit still has room for
local until_ms = now_ms + ttl_ms
local reason = ''

local function fits(left, each, what)
  if each <= 0 then  -- a request estimated at nothing fits while the limit is not passed already
    if left < 0 then room = 0; reason = what end
    return
  end
  local n = math.floor(left / each)
  if n < room then room = n; reason = what end
end

-- what every limited window of `scope` has left; the lease ends with the shortest such bucket (a request
-- admitted later than its reservation's bucket would leave the window too early)
local function scope_room(scope, at, name)
  for w = 1, nw do
    local lr = tonumber(ARGV[at + w - 1])
    local lt = tonumber(ARGV[at + nw + w - 1])
    local lc = tonumber(ARGV[at + 2 * nw + w - 1])
    if lr >= 0 or lt >= 0 or lc >= 0 then
      local seconds, bucket = wins[w][2], wins[w][3]
      local first, last = window_range(now, seconds, bucket)
      local req, tok, cost = 0, 0, 0
      for b = first, last, bucket do
        local v = redis.call('HMGET', '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. b, 'req', 'tin', 'tout', 'cost')
        req = req + (tonumber(v[1]) or 0)
        tok = tok + (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0)
        cost = cost + (tonumber(v[4]) or 0)
      end
      if lr >= 0 then fits(lr - req, 1, 'requests_per_' .. wins[w][1] .. ' on ' .. name) end
      if lt >= 0 then fits(lt - tok, est_tok, 'tokens_per_' .. wins[w][1] .. ' on ' .. name) end
      if lc >= 0 then fits(lc - cost, est_cost, 'cost_per_' .. wins[w][1] .. ' on ' .. name) end
      until_ms = math.min(until_ms, (last + bucket) * 1000)
    end
  end
end

scope_room(pscope, limits_at, 'provider')
scope_room(mscope, limits_at + 3 * nw, 'model')
if key_scope ~= '' then
  scope_room(key_scope, key_limits_at, 'key')
  if month_key ~= '' and (month_limits[1] >= 0 or month_limits[2] >= 0 or month_limits[3] >= 0) then
    local v = redis.call('HMGET', month_key, 'req', 'tin', 'tout', 'cost')
    local req, tok, cost = tonumber(v[1]) or 0, (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0), tonumber(v[4]) or 0
    if month_limits[1] >= 0 then fits(month_limits[1] - req, 1, 'requests_per_month on key') end
    if month_limits[2] >= 0 then fits(month_limits[2] - tok, est_tok, 'tokens_per_month on key') end
    if month_limits[3] >= 0 then fits(month_limits[3] - cost, est_cost, 'cost_per_month on key') end
    until_ms = math.min(until_ms, month_end * 1000)
  end
end
if room < 1 then return {0, 0, reason .. ' reached'} end

-- adaptive size: when what is left is small against the edges asking, one request at a time
local edges = '$CAP_EDGES_PREFIX' .. pscope .. '|' .. mscope .. '|' .. key_scope
redis.call('ZREMRANGEBYSCORE', edges, '-inf', now_ms - ttl_ms)
redis.call('ZADD', edges, now_ms, edge)
redis.call('PEXPIRE', edges, ttl_ms)
local asking = redis.call('ZCARD', edges)
local n = wanted  -- at most room: room >= 2 x asking x wanted here
if room < 2 * asking * wanted then n = 1 end

local function reserve(scope)
  for w = 1, nw do
    local seconds, bucket = wins[w][2], wins[w][3]
    local start = now - (now % bucket)
    local key = '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. start
    redis.call('HINCRBY', key, 'req', n)
    redis.call('HINCRBY', key, 'tin', n * est_in)
    redis.call('HINCRBY', key, 'tout', n * est_out)
    redis.call('HINCRBY', key, 'cost', n * est_cost)
    redis.call('EXPIREAT', key, start + seconds + bucket)
  end
  redis.call('SADD', KEYS[1], scope)
end
reserve(pscope)
reserve(mscope)
local month = ''
if key_scope ~= '' then
  reserve(key_scope)
  if month_key ~= '' then
    month = month_key
    redis.call('HINCRBY', month_key, 'req', n)
    redis.call('HINCRBY', month_key, 'tin', n * est_in)
    redis.call('HINCRBY', month_key, 'tout', n * est_out)
    redis.call('HINCRBY', month_key, 'cost', n * est_cost)
    redis.call('EXPIREAT', month_key, month_expire)
  end
end
local lease = '$CAP_LEASE_PREFIX' .. lease_id
redis.call('HSET', lease, 'edge', edge, 'provider', provider, 'pscope', pscope, 'mscope', mscope,
           'kscope', key_scope, 'month', month, 'at', now, 'n', n, 'tin', n * est_in, 'tout', n * est_out,
           'cost', n * est_cost, 'state', 'live')
redis.call('PEXPIREAT', lease, until_ms + grace_ms + 86400000)  -- a backstop: the reaper takes it first
redis.call('ZADD', '$CAP_LEASES', until_ms + grace_ms, lease_id)
redis.call('ZADD', '$CAP_LEASE_ENDS', until_ms, lease_id)
return {n, until_ms, ''}
"""

# The edge gives a lease back: ARGV now_ms, lease id, admitted n, tin, tout, cost (their estimates),
# hold_ms, then the windows. What it did not admit goes back now; the rest stays reserved and is settled by
# each request's usage event (actual - estimate).
GIVE_BACK_LUA = _LUA_WINDOWS + """
local now_ms = tonumber(ARGV[1])
local lease = '$CAP_LEASE_PREFIX' .. ARGV[2]
local used = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local hold_ms = tonumber(ARGV[7])
local wins = read_windows(8)
""" + _GIVE_BACK + """
local state = redis.call('HGET', lease, 'state')
if not state then  -- not granted (yet): its question may still be on its way; the grant will refuse it
  redis.call('HSET', lease, 'state', 'given_up')
  redis.call('PEXPIRE', lease, hold_ms)
  return 'gone'
end
if state ~= 'live' then return 'gone' end  -- reaped already, or given back
local v = redis.call('HMGET', lease, 'n', 'tin', 'tout', 'cost')
local back = {}
for f = 1, 4 do back[f] = math.max(0, tonumber(v[f]) - used[f]) end
give_back(lease, back[1], back[2], back[3], back[4], math.floor(now_ms / 1000))
redis.call('HSET', lease, 'state', 'returned', 'kept_n', v[1] - back[1], 'kept_tin', v[2] - back[2],
           'kept_tout', v[3] - back[3], 'kept_cost', v[4] - back[4])
redis.call('ZADD', '$CAP_LEASES', now_ms + hold_ms, ARGV[2])
redis.call('ZREM', '$CAP_LEASE_ENDS', ARGV[2])
return 'returned'
"""

# Takes up to ARGV[2] leases due at ARGV[1] (ms), then the windows and the tombstone's life (ARGV[3], s).
# A live one (its edge never gave it back) returns all but what usage events settled from it. A returned
# one, ``hold_ms`` after its give-back, returns what its edge admitted and no event settled: requests whose
# edge died before reporting them (nobody got an answer), attempts that failed after the give-back. Either
# way the record stays as a tombstone (state reaped): an event that still comes counts in full.
REAP_LUA = _LUA_WINDOWS + """
local now_ms = tonumber(ARGV[1])
local keep_s = tonumber(ARGV[3])
local wins = read_windows(4)
""" + _GIVE_BACK + """
local due = redis.call('ZRANGEBYSCORE', '$CAP_LEASES', '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local reaped = 0
for _, id in ipairs(due) do
  redis.call('ZREM', '$CAP_LEASES', id)
  redis.call('ZREM', '$CAP_LEASE_ENDS', id)
  local lease = '$CAP_LEASE_PREFIX' .. id
  local state = redis.call('HGET', lease, 'state')
  -- what the lease still holds in the windows: all it reserved (live), or what its edge kept (returned)
  local held = {}
  if state == 'live' then
    held = redis.call('HMGET', lease, 'n', 'tin', 'tout', 'cost')
  elseif state == 'returned' then
    held = redis.call('HMGET', lease, 'kept_n', 'kept_tin', 'kept_tout', 'kept_cost')
  end
  local applied = redis.call('HMGET', lease, 'applied_n', 'applied_tin', 'applied_tout', 'applied_cost')
  local back, unsettled = {}, false
  for f = 1, 4 do
    back[f] = math.max(0, (tonumber(held[f]) or 0) - (tonumber(applied[f]) or 0))
    unsettled = unsettled or back[f] > 0
  end
  if state == 'live' or unsettled then
    give_back(lease, back[1], back[2], back[3], back[4], math.floor(now_ms / 1000))
    redis.call('HSET', lease, 'state', 'reaped')
    redis.call('EXPIRE', lease, keep_s)  -- a late event of this lease counts in full, not as a settlement
    reaped = reaped + 1
  else  -- given back, and every request it kept has reported: nothing more can come for it
    redis.call('DEL', lease)
  end
end
return reaped
"""

# What edges admitted so far from their live leases (``LeaseUse``s; ARGV: groups of lease id, seq, n, tin,
# tout, cost): kept on the lease as used_*, for the windows' views only (``windows.READ_WINDOWS_LUA`` shows
# a live lease's used part, not what it holds unused). A report older than the last one is ignored.
USE_LUA = """
local noted = 0
for i = 1, #ARGV, 6 do
  local lease = '$CAP_LEASE_PREFIX' .. ARGV[i]
  local v = redis.call('HMGET', lease, 'state', 'used_seq')
  if v[1] == 'live' and tonumber(ARGV[i + 1]) > (tonumber(v[2]) or 0) then
    redis.call('HSET', lease, 'used_seq', ARGV[i + 1], 'used_n', ARGV[i + 2], 'used_tin', ARGV[i + 3],
               'used_tout', ARGV[i + 4], 'used_cost', ARGV[i + 5])
    noted = noted + 1
  end
end
return noted
"""


# Leases past their end (ARGV[1], ms) that no edge gave back yet: up to ARGV[2] of them, as {id, edge, ...}.
# Ids whose lease is no longer live (given back, reaped, expired) leave the set here.
ENDED_LUA = """
local ended = redis.call('ZRANGEBYSCORE', '$CAP_LEASE_ENDS', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ended) do
  local v = redis.call('HMGET', '$CAP_LEASE_PREFIX' .. id, 'state', 'edge')
  if v[1] == 'live' then
    table.insert(out, id)
    table.insert(out, v[2] or '')
  else
    redis.call('ZREM', '$CAP_LEASE_ENDS', id)
  end
end
return out
"""

# The leases ARGV[4..] whose edge process is gone (its NATS connection closed): as the reaper takes a live
# lease, now rather than ``grace_ms`` after its end, since no request of that edge can still report. ARGV
# now_ms, the tombstone's life (s), the number of ids, the ids, then the windows.
LEFT_BY_DEAD_EDGE_LUA = _LUA_WINDOWS + """
local now_ms = tonumber(ARGV[1])
local keep_s = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local wins = read_windows(4 + count)
""" + _GIVE_BACK + """
local reaped = 0
for a = 4, 3 + count do
  local id = ARGV[a]
  local lease = '$CAP_LEASE_PREFIX' .. id
  redis.call('ZREM', '$CAP_LEASE_ENDS', id)
  if redis.call('HGET', lease, 'state') == 'live' then
    local held = redis.call('HMGET', lease, 'n', 'tin', 'tout', 'cost')
    local applied = redis.call('HMGET', lease, 'applied_n', 'applied_tin', 'applied_tout', 'applied_cost')
    local back = {}
    for f = 1, 4 do back[f] = math.max(0, (tonumber(held[f]) or 0) - (tonumber(applied[f]) or 0)) end
    give_back(lease, back[1], back[2], back[3], back[4], math.floor(now_ms / 1000))
    redis.call('HSET', lease, 'state', 'reaped')
    redis.call('EXPIRE', lease, keep_s)  -- a late event of this lease counts in full, not as a settlement
    redis.call('ZREM', '$CAP_LEASES', id)
    reaped = reaped + 1
  end
end
return reaped
"""

@dataclass
class LeaseGrant:
    n: int  # requests granted (0: none; see reason)
    until_ms: int  # the edge admits from it until then (epoch ms)
    reason: str  # why nothing was granted ("" when something was)


@dataclass
class LeaseRoute:
    """One route a lease is for: the candidate, its per-request estimate and the limits it draws on."""

    provider: str
    model: str
    provider_limits: Limits
    model_limits: Limits
    est_tokens_in: int
    est_tokens_out: int
    est_cost: Decimal


class CapacityLeases:
    def __init__(self, redis):
        self._grant = redis.register_script(redis_keys.lua(GRANT_LUA))
        self._give_back = redis.register_script(redis_keys.lua(GIVE_BACK_LUA))
        self._reap = redis.register_script(redis_keys.lua(REAP_LUA))
        self._ended = redis.register_script(redis_keys.lua(ENDED_LUA))
        self._left_by_dead_edge = redis.register_script(redis_keys.lua(LEFT_BY_DEAD_EDGE_LUA))
        self._use = redis.register_script(redis_keys.lua(USE_LUA))

    async def grant(self, lease_id: str, edge: str, route: LeaseRoute, wanted: int, now_ms: int, ttl_ms: int,
                    grace_ms: int, key: KeyRecord | None = None, budget_tz: str = "UTC") -> LeaseGrant:
        args: list[object] = [now_ms, lease_id, edge, max(1, wanted), ttl_ms, grace_ms, *_WINDOW_ARGS,
                              *_key_args(key, now_ms, budget_tz), route.provider, provider_scope(route.provider),
                              model_scope(route.provider, route.model), route.est_tokens_in, route.est_tokens_out,
                              usd_to_nano(route.est_cost), *_limit_args(route.provider_limits),
                              *_limit_args(route.model_limits)]
        n, until_ms, reason = await self._grant(keys=[SCOPES_KEY], args=args)
        return LeaseGrant(int(n), int(until_ms), str(reason))

    async def give_back(self, lease_id: str, admitted: int, tokens_in: int, tokens_out: int, cost_nano: int,
                        now_ms: int, hold_ms: int) -> str:
        """The edge is done with the lease: ``admitted`` requests (and their estimates) were taken from it."""
        return str(await self._give_back(keys=[], args=[now_ms, lease_id, admitted, tokens_in, tokens_out,
                                                        cost_nano, hold_ms, *_WINDOW_ARGS]))

    async def note_use(self, uses: list[tuple[str, int, int, int, int, int]]) -> int:
        """What edges admitted so far from live leases: (lease id, seq, n, tin, tout, cost) each."""
        if not uses:
            return 0
        return int(await self._use(keys=[], args=[x for use in uses for x in use]))

    async def reap(self, now_ms: int, keep_s: int, limit: int = 200) -> int:
        return int(await self._reap(keys=[], args=[now_ms, limit, keep_s, *_WINDOW_ARGS]))

    async def ended(self, now_ms: int, limit: int = 200) -> list[tuple[str, str]]:
        """(lease id, edge) of live leases past their end: their edge has not given them back yet."""
        flat = await self._ended(keys=[], args=[now_ms, limit])
        return [(str(flat[i]), str(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]

    async def reap_dead_edge(self, lease_ids: list[str], now_ms: int, keep_s: int) -> int:
        """Leases whose edge process is gone: what no usage event settled goes back now."""
        if not lease_ids:
            return 0
        return int(await self._left_by_dead_edge(keys=[], args=[now_ms, keep_s, len(lease_ids), *lease_ids,
                                                                *_WINDOW_ARGS]))
