"""Redis adapter for the router: atomic admission, attempt outcomes, shared health, pin and smart flags.

Everything a router replica decides on lives here, in Redis, so every replica
sees the same thing. Admission is one Lua script: it walks the ordered
candidates and, for the first one that is not cooling down, not behind an
open breaker and under every limit of every window, reserves the request
(one request, the estimated tokens and cost) in the live windows, all in one
atomic step. Two replicas can therefore never admit past a limit together.

Keys (besides the shared window buckets of ``llmgw_common.windows``):
``llmgw:cool:<p>`` (cooldown after a 429, PX), ``llmgw:brk:<p>`` (breaker: hash
``open_until`` ms; past it the breaker is half-open), ``llmgw:probe:<p>`` (the
half-open probe in flight), ``llmgw:fail:<p>`` (zset of recent failures),
``llmgw:inflight:<p>`` (zset request id -> admitted at ms), ``llmgw:lat:<p>``
(moving average latency), ``llmgw:pin``, ``llmgw:smart``.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.commands.core import AsyncScript

from llmgw_common import redis_keys
from llmgw_common.config import BreakerConfig, Limits
from llmgw_common.messages import AttemptOutcome, Reservation
from llmgw_common.keys import KeyRecord
from llmgw_common.leases import LEASES_KEY, lease_key, lease_member
from llmgw_common.windows import (LUA_WINDOW_RANGE, SCOPES_KEY, WINDOWS, key_scope, model_scope, month_key, month_of,
                                  provider_scope, usd_to_nano)

from .policy import PlannedCandidate, ProviderStats

PIN_KEY = redis_keys.PIN
ANSWER_PREFIX = redis_keys.ANSWER_PREFIX  # (request id, attempt) -> the provider admitted: a question asked again
SMART_KEY = redis_keys.SMART
INFLIGHT_STALE_MS = 15 * 60 * 1000  # an admitted request whose outcome never came stops counting
PROBE_TTL_MS = 60_000
LATENCY_ALPHA = 0.2

_WINDOW_ARGS: list[object] = [len(WINDOWS)]
for _w in WINDOWS:
    _WINDOW_ARGS += [_w.name, _w.seconds, _w.bucket_s]

_LUA_WINDOWS = LUA_WINDOW_RANGE + """
local function read_windows(i)
  local nw = tonumber(ARGV[i])
  local wins = {}
  for w = 1, nw do
    wins[w] = {ARGV[i + 1 + (w - 1) * 3], tonumber(ARGV[i + 2 + (w - 1) * 3]), tonumber(ARGV[i + 3 + (w - 1) * 3])}
  end
  return wins, i + 1 + nw * 3
end
"""

# the answer key of a question its edge gave up on: never admitted, whenever it arrives
GIVEN_UP = "!given-up"
_LUA_GIVEN_UP = f"local GIVEN_UP = '{GIVEN_UP}'\n"

ADMIT_LUA = _LUA_WINDOWS + _LUA_GIVEN_UP + """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local rid = ARGV[2]
local wins, i = read_windows(3)
local nw = #wins
-- the caller's gateway key: its scope, name, window limits (3 x nw) and calendar month
local key_scope, key_name = ARGV[i], ARGV[i + 1]
local key_limits_at = i + 2
i = i + 2 + 3 * nw
local month_key, month_end, month_expire = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
local month_limits = {tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])}
i = i + 6
-- the admission lease (llmgw_common.leases): the request's event id and how long until it counts as abandoned
local lease_event, lease_ttl_ms = ARGV[i], tonumber(ARGV[i + 1])
-- the same question asked again (the edge lost the answer: a router or NATS died after admission): the
-- same answer, not a second reservation
local answer_key = ARGV[i + 2]
i = i + 3
local n = tonumber(ARGV[i]); i = i + 1
local out = {0, 0}  -- the admitted candidate (0: none), whether it is the breaker's probe, then the reasons
if answer_key ~= '' then
  local earlier = redis.call('GET', answer_key)
  if earlier == GIVEN_UP then  -- the edge gave up on this question before it got here (GIVE_UP_LUA)
    return {-2}
  end
  if earlier then
    return {-1, earlier}
  end
end

-- every bucket overlapping [now - seconds, now]: a request counts for at least
-- the window's length (see llmgw_common.windows). Also returns the buckets' own
-- totals, oldest first, to tell how long until enough of them leave the window.
local function window_sum(scope, w)
  local bucket, seconds = wins[w][3], wins[w][2]
  local first, last = window_range(now, seconds, bucket)
  local req, tok, cost = 0, 0, 0
  local each = {}
  for b = first, last, bucket do
    local v = redis.call('HMGET', '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. b, 'req', 'tin', 'tout', 'cost')
    local r, t, c = tonumber(v[1]) or 0, (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0), tonumber(v[4]) or 0
    req, tok, cost = req + r, tok + t, cost + c
    table.insert(each, {b, r, t, c})
  end
  return req, tok, cost, each
end

-- seconds until the window's sum of field f (1 req, 2 tok, 3 cost) leaves room for `need` more under
-- `limit`, as its oldest buckets leave it; nil when even an empty window has no room
local function wait_for_room(each, f, total, need, limit, seconds, bucket)
  if need > limit then return nil end
  local left = total
  for _, b in ipairs(each) do
    left = left - b[f + 1]
    if left + need <= limit then
      return math.max(1, b[1] + seconds + bucket - now)
    end
  end
  return nil
end

local function left_text(wait)
  if wait then return ' (' .. wait .. 's left)' end
  return ''
end

-- the first limit of `scope` (limits at ARGV[at..]) this request would break, as a reason, or nil
local function over_scope(scope, kind, at, est_tok, est_cost)
  for w = 1, nw do
    local lr = tonumber(ARGV[at + w - 1])
    local lt = tonumber(ARGV[at + nw + w - 1])
    local lc = tonumber(ARGV[at + 2 * nw + w - 1])
    if lr >= 0 or lt >= 0 or lc >= 0 then
      local req, tok, cost, each = window_sum(scope, w)
      local name, seconds, bucket = wins[w][1], wins[w][2], wins[w][3]
      if lr >= 0 and req + 1 > lr then
        return 'requests_per_' .. name .. ' reached on ' .. kind .. ' (' .. req .. '/' .. lr .. ')'
          .. left_text(wait_for_room(each, 1, req, 1, lr, seconds, bucket))
      end
      if lt >= 0 and tok + est_tok > lt then
        return 'tokens_per_' .. name .. ' would be exceeded on ' .. kind .. ' (' .. tok .. ' used + ~' .. est_tok
          .. ' > ' .. lt .. ')' .. left_text(wait_for_room(each, 2, tok, est_tok, lt, seconds, bucket))
      end
      if lc >= 0 and cost + est_cost > lc then
        return 'cost_per_' .. name .. ' would be exceeded on ' .. kind .. ' (' .. cost .. ' used + ~' .. est_cost
          .. ' > ' .. lc .. ' nano-USD)' .. left_text(wait_for_room(each, 3, cost, est_cost, lc, seconds, bucket))
      end
    end
  end
  return nil
end

-- the key's calendar month: one hash, reset when the next month starts
local function over_month(est_tok, est_cost)
  if month_key == '' then return nil end
  local v = redis.call('HMGET', month_key, 'req', 'tin', 'tout', 'cost')
  local req, tok, cost = tonumber(v[1]) or 0, (tonumber(v[2]) or 0) + (tonumber(v[3]) or 0), tonumber(v[4]) or 0
  -- the month's end frees it, unless this request alone is over the limit
  local function reset(need, limit)
    if need > limit then return '' end
    return ' (' .. math.max(1, month_end - now) .. 's left)'
  end
  if month_limits[1] >= 0 and req + 1 > month_limits[1] then
    return 'requests_per_month reached on key ' .. key_name .. ' (' .. req .. '/' .. month_limits[1] .. ')'
      .. reset(1, month_limits[1])
  end
  if month_limits[2] >= 0 and tok + est_tok > month_limits[2] then
    return 'tokens_per_month would be exceeded on key ' .. key_name .. ' (' .. tok .. ' used + ~' .. est_tok
      .. ' > ' .. month_limits[2] .. ')' .. reset(est_tok, month_limits[2])
  end
  if month_limits[3] >= 0 and cost + est_cost > month_limits[3] then
    return 'cost_per_month budget would be exceeded on key ' .. key_name .. ' (' .. cost .. ' used + ~' .. est_cost
      .. ' > ' .. month_limits[3] .. ' nano-USD)' .. reset(est_cost, month_limits[3])
  end
  return nil
end

local function reserve(scope, est_in, est_out, est_cost)
  for w = 1, nw do
    local seconds, bucket = wins[w][2], wins[w][3]
    local start = now - (now % bucket)  -- the bucket of the reservation's at_s (= now)
    local key = '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. start
    redis.call('HINCRBY', key, 'req', 1)
    redis.call('HINCRBY', key, 'tin', est_in)
    redis.call('HINCRBY', key, 'tout', est_out)
    redis.call('HINCRBY', key, 'cost', est_cost)
    redis.call('EXPIREAT', key, start + seconds + bucket)
  end
  redis.call('SADD', KEYS[1], scope)
end

for c = 1, n do
  local provider = ARGV[i]
  local scopes = {ARGV[i + 1], ARGV[i + 2]}
  local est_in, est_out, est_cost = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local limits_at = i + 6
  i = i + 6 + 6 * nw
  local reason = nil
  local probe = false
  local cool = redis.call('PTTL', '$COOLDOWN_PREFIX' .. provider)
  if cool > 0 then
    reason = 'cooling down after a 429 (' .. math.ceil(cool / 1000) .. 's left)'
  end
  if not reason then
    local open_until = tonumber(redis.call('HGET', '$BREAKER_PREFIX' .. provider, 'open_until') or '0')
    if open_until > now_ms then
      reason = 'circuit breaker open (' .. math.ceil((open_until - now_ms) / 1000) .. 's left)'
    elseif open_until > 0 then
      if redis.call('EXISTS', '$PROBE_PREFIX' .. provider) == 1 then
        reason = 'circuit breaker half-open, a probe is in flight'
      else
        probe = true
      end
    end
  end
  local est_tok = est_in + est_out
  if not reason then
    reason = over_scope(scopes[1], 'provider', limits_at, est_tok, est_cost)
      or over_scope(scopes[2], 'model', limits_at + 3 * nw, est_tok, est_cost)
  end
  if not reason and key_scope ~= '' then
    reason = over_scope(key_scope, 'key ' .. key_name, key_limits_at, est_tok, est_cost)
      or over_month(est_tok, est_cost)
  end
  if not reason then
    if probe then
      redis.call('SET', '$PROBE_PREFIX' .. provider, rid, 'PX', tonumber(ARGV[#ARGV]))
    end
    reserve(scopes[1], est_in, est_out, est_cost)
    reserve(scopes[2], est_in, est_out, est_cost)
    if key_scope ~= '' then
      reserve(key_scope, est_in, est_out, est_cost)
    end
    if month_key ~= '' then
      redis.call('HINCRBY', month_key, 'req', 1)
      redis.call('HINCRBY', month_key, 'tin', est_in)
      redis.call('HINCRBY', month_key, 'tout', est_out)
      redis.call('HINCRBY', month_key, 'cost', est_cost)
      redis.call('EXPIREAT', month_key, month_expire)
    end
    redis.call('ZADD', '$INFLIGHT_PREFIX' .. provider, now_ms, rid)
    if answer_key ~= '' then
      redis.call('SET', answer_key, provider, 'PX', math.max(lease_ttl_ms, 1000))
    end
    if lease_event ~= '' then
      local member = rid .. ':' .. provider
      local lease = '$LEASE_PREFIX' .. member
      redis.call('HSET', lease, 'event', lease_event, 'rid', rid, 'provider', provider, 'model_scope', scopes[2],
                 'key_scope', key_scope, 'at', now, 'tin', est_in, 'tout', est_out, 'cost', est_cost,
                 'scope', scopes[1], 'month', month_key)  -- scope, month: what a give-up releases
      redis.call('PEXPIREAT', lease, now_ms + lease_ttl_ms + 86400000)  -- a backstop: the reaper takes it first
      redis.call('ZADD', '$LEASES', now_ms + lease_ttl_ms, member)
    end
    out[1] = c
    if probe then out[2] = 1 end
    return out
  end
  table.insert(out, c)
  table.insert(out, reason)
end
return out
"""

OUTCOME_LUA = _LUA_WINDOWS + """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local provider, rid, kind = ARGV[2], ARGV[3], ARGV[4]
local retry_after_ms, latency = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_failures, window_ms, open_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local alpha = tonumber(ARGV[10])
local has_res = ARGV[11] == '1'
local at, tin, tout, cost = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
-- the scopes it was reserved in (provider, model, and the key's when there was one), then the key's month
local n_scopes = tonumber(ARGV[16])
local scopes = {}
for k = 1, n_scopes do scopes[k] = ARGV[16 + k] end
local month_key = ARGV[17 + n_scopes]
local wins = read_windows(18 + n_scopes)

redis.call('ZREM', '$INFLIGHT_PREFIX' .. provider, rid)
if has_res then  -- a failed attempt's reservation is given back below: its lease ends here
  redis.call('ZREM', '$LEASES', rid .. ':' .. provider)
  redis.call('DEL', '$LEASE_PREFIX' .. rid .. ':' .. provider)
end
local probe_key = '$PROBE_PREFIX' .. provider
local was_probe = redis.call('GET', probe_key) == rid

if kind == 'ok' then
  local old = tonumber(redis.call('GET', '$LATENCY_PREFIX' .. provider) or '-1')
  local new = latency
  if old >= 0 then new = old + alpha * (latency - old) end
  redis.call('SET', '$LATENCY_PREFIX' .. provider, tostring(new))
  if was_probe then
    redis.call('DEL', '$BREAKER_PREFIX' .. provider, probe_key, '$FAILURES_PREFIX' .. provider)
  end
  return 'ok'
end

-- a failed attempt: give back what admission reserved for it
if has_res then
  if month_key ~= '' and redis.call('EXISTS', month_key) == 1 then
    redis.call('HINCRBY', month_key, 'req', -1)
    redis.call('HINCRBY', month_key, 'tin', 0 - tin)
    redis.call('HINCRBY', month_key, 'tout', 0 - tout)
    redis.call('HINCRBY', month_key, 'cost', 0 - cost)
  end
  for s = 1, #scopes do
    for w = 1, #wins do
      local seconds, bucket = wins[w][2], wins[w][3]
      local start = at - (at % bucket)
      if start + seconds + bucket > now then  -- a window still sums it (else it has expired)
        local key = '$WINDOW_PREFIX' .. scopes[s] .. ':' .. bucket .. ':' .. start
        redis.call('HINCRBY', key, 'req', -1)
        -- "0 - x", not "-x": Lua's -0 becomes the string "-0", which HINCRBY rejects
        redis.call('HINCRBY', key, 'tin', 0 - tin)
        redis.call('HINCRBY', key, 'tout', 0 - tout)
        redis.call('HINCRBY', key, 'cost', 0 - cost)
      end
    end
  end
end

if kind == 'rate_limited' then
  redis.call('SET', '$COOLDOWN_PREFIX' .. provider, '1', 'PX', retry_after_ms)
  if was_probe then redis.call('DEL', probe_key) end
  return 'cooldown'
end

if kind == 'failure' then
  local fail_key = '$FAILURES_PREFIX' .. provider
  redis.call('ZADD', fail_key, now_ms, rid)
  redis.call('ZREMRANGEBYSCORE', fail_key, 0, now_ms - window_ms)
  redis.call('PEXPIRE', fail_key, window_ms)
  if was_probe or redis.call('ZCARD', fail_key) >= max_failures then
    redis.call('HSET', '$BREAKER_PREFIX' .. provider, 'open_until', now_ms + open_ms)
    redis.call('PEXPIRE', '$BREAKER_PREFIX' .. provider, open_ms + 24 * 3600 * 1000)
    redis.call('DEL', probe_key, fail_key)
    return 'breaker_open'
  end
  return 'failure'
end
if was_probe then redis.call('DEL', probe_key) end
return 'released'
"""

# Successful attempts, folded: what OUTCOME_LUA does for each "ok" outcome, done once per provider for a
# whole batch, so a batch costs a few commands per provider instead of four or more per outcome. ARGV: alpha,
# the number of providers, then per provider: its id, the number of outcomes, and per outcome (in the order
# they came) its request id, latency (ms) and the admission lease it ends ("" when it had no reservation).
# The same state as one by one: the probe key does not change between two successes unless one of them is
# the probe (the breaker closes then, and the rest see no probe); the moving average folds in order.
OUTCOMES_OK_LUA = """
local alpha = tonumber(ARGV[1])
local i = 3
for _ = 1, tonumber(ARGV[2]) do
  local provider, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local rids, members, leases, latencies = {}, {}, {}, {}
  for k = 1, n do
    rids[k] = ARGV[i]
    latencies[k] = tonumber(ARGV[i + 1])
    if ARGV[i + 2] ~= '' then
      table.insert(members, ARGV[i + 2])
      table.insert(leases, '$LEASE_PREFIX' .. ARGV[i + 2])
    end
    i = i + 3
  end
  redis.call('ZREM', '$INFLIGHT_PREFIX' .. provider, unpack(rids))
  if #members > 0 then
    redis.call('ZREM', '$LEASES', unpack(members))
    redis.call('DEL', unpack(leases))
  end
  local probe_key = '$PROBE_PREFIX' .. provider
  local probe = redis.call('GET', probe_key)
  if probe then
    for k = 1, n do
      if rids[k] == probe then
        redis.call('DEL', '$BREAKER_PREFIX' .. provider, probe_key, '$FAILURES_PREFIX' .. provider)
        break
      end
    end
  end
  local latency = tonumber(redis.call('GET', '$LATENCY_PREFIX' .. provider) or '-1')
  for k = 1, n do
    if latency < 0 then latency = latencies[k] else latency = latency + alpha * (latencies[k] - latency) end
  end
  redis.call('SET', '$LATENCY_PREFIX' .. provider, tostring(latency))
end
return 0
"""

# The edge gave up on a question (request id, attempt): it will never use the answer. In one atomic step:
# the question's answer key becomes GIVEN_UP (a copy still on its way is refused when it arrives), and an
# admission already made for it (the answer was lost, or came too late) is released: its reservation leaves
# the windows and the month, its lease ends (the reaper never bills it), its in-flight mark and probe go.
# ARGV: now ms, answer key, request id, how long the mark lasts (ms), then the windows. Returns 1 when it
# released an admission.
GIVE_UP_LUA = _LUA_WINDOWS + _LUA_GIVEN_UP + """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local answer_key, rid, mark_ms = ARGV[2], ARGV[3], tonumber(ARGV[4])
local wins = read_windows(5)
local provider = redis.call('GET', answer_key)
redis.call('SET', answer_key, GIVEN_UP, 'PX', mark_ms)
if not provider or provider == GIVEN_UP then return 0 end
local member = rid .. ':' .. provider
if redis.call('ZREM', '$LEASES', member) == 0 then return 0 end  -- settled or reaped already
local lease = '$LEASE_PREFIX' .. member
local f = redis.call('HMGET', lease, 'scope', 'model_scope', 'key_scope', 'month', 'at', 'tin', 'tout', 'cost')
redis.call('DEL', lease)
redis.call('ZREM', '$INFLIGHT_PREFIX' .. provider, rid)
if redis.call('GET', '$PROBE_PREFIX' .. provider) == rid then redis.call('DEL', '$PROBE_PREFIX' .. provider) end
local at, tin, tout, cost = tonumber(f[5]), tonumber(f[6]), tonumber(f[7]), tonumber(f[8])
local month_key = f[4] or ''
if month_key ~= '' and redis.call('EXISTS', month_key) == 1 then
  redis.call('HINCRBY', month_key, 'req', -1)
  redis.call('HINCRBY', month_key, 'tin', 0 - tin)
  redis.call('HINCRBY', month_key, 'tout', 0 - tout)
  redis.call('HINCRBY', month_key, 'cost', 0 - cost)
end
for _, scope in ipairs({f[1] or '', f[2] or '', f[3] or ''}) do
  if scope ~= '' then
    for w = 1, #wins do
      local seconds, bucket = wins[w][2], wins[w][3]
      local start = at - (at % bucket)
      if start + seconds + bucket > now then  -- a window still sums it (else it has expired)
        local key = '$WINDOW_PREFIX' .. scope .. ':' .. bucket .. ':' .. start
        redis.call('HINCRBY', key, 'req', -1)
        redis.call('HINCRBY', key, 'tin', 0 - tin)
        redis.call('HINCRBY', key, 'tout', 0 - tout)
        redis.call('HINCRBY', key, 'cost', 0 - cost)
      end
    end
  end
end
return 1
"""

STATS_LUA = """
local now_ms = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local out = {redis.call('GET', '$PIN') or '', redis.call('GET', '$SMART') or ''}
for i = 3, #ARGV do
  local p = ARGV[i]
  redis.call('ZREMRANGEBYSCORE', '$INFLIGHT_PREFIX' .. p, 0, now_ms - stale)
  local open_until = tonumber(redis.call('HGET', '$BREAKER_PREFIX' .. p, 'open_until') or '0')
  local breaker = 'closed'
  if open_until > now_ms then breaker = 'open' elseif open_until > 0 then breaker = 'half-open' end
  table.insert(out, redis.call('ZCARD', '$INFLIGHT_PREFIX' .. p))
  table.insert(out, redis.call('GET', '$LATENCY_PREFIX' .. p) or '')
  table.insert(out, math.max(redis.call('PTTL', '$COOLDOWN_PREFIX' .. p), 0))
  table.insert(out, breaker)
end
return out
"""


def _limit_args(limits: Limits) -> list[int]:
    out: list[int] = []
    for kind in ("requests", "tokens", "cost"):
        for w in WINDOWS:
            v = getattr(limits, f"{kind}_per_{w.name}")
            out.append(-1 if v is None else (usd_to_nano(v) if kind == "cost" else int(v)))
    return out


_NO_LIMITS = [-1] * (3 * len(WINDOWS))


def _key_args(key: KeyRecord | None, now_ms: int, budget_tz: str) -> list[object]:
    """The admission script's key block: scope, name, window limits, then the calendar month's key, end,
    expiry and limits ("" and no limits without a key)."""
    if key is None:
        return ["", "", *_NO_LIMITS, "", 0, 0, -1, -1, -1]
    scope = key_scope(key.id)
    _label, _start, end = month_of(now_ms / 1000, budget_tz)
    month, expire_at = month_key(scope, now_ms / 1000, budget_tz)
    lim = key.limits
    return [scope, key.name.replace("'", ""), *_limit_args(lim), month, end, expire_at,
            -1 if lim.requests_per_month is None else int(lim.requests_per_month),
            -1 if lim.tokens_per_month is None else int(lim.tokens_per_month),
            -1 if lim.cost_per_month is None else usd_to_nano(lim.cost_per_month)]


@dataclass
class Admission:
    index: int | None  # position in the ordered list of the admitted candidate
    reasons: dict[int, str]  # position -> why it was not admitted
    reservation: Reservation | None
    probe: bool = False  # the half-open breaker's probe
    given_up: bool = False  # its edge gave up on the question first: nothing admitted, nobody to answer


class RoutingStore:
    def __init__(self, redis):
        self._redis = redis
        self._admit = redis.register_script(redis_keys.lua(ADMIT_LUA))
        self._outcome = redis.register_script(redis_keys.lua(OUTCOME_LUA))
        self._outcomes_ok = redis.register_script(redis_keys.lua(OUTCOMES_OK_LUA))
        self._stats = redis.register_script(redis_keys.lua(STATS_LUA))
        self._give_up = redis.register_script(redis_keys.lua(GIVE_UP_LUA))

    async def admit(self, ordered: list[PlannedCandidate], request_id: str, now_ms: int,
                    key: KeyRecord | None = None, budget_tz: str = "UTC", event_id: str | None = None,
                    lease_s: float = 0.0, attempt: int = 0) -> Admission:
        """Admit the first candidate under every limit: its provider's, its model's and the caller's key's
        (windows and calendar month), reserving the estimate in all of them at once; with ``event_id``
        also the admission lease that makes the reservation an abandoned event if nobody settles it
        within ``lease_s``."""
        if not ordered:
            return Admission(None, {}, None)
        # one admission per question: (request, providers already tried); asked again, it answers the same
        answer = f"{ANSWER_PREFIX}{request_id}:{attempt}" if event_id else ""
        args: list[object] = [now_ms, request_id, *_WINDOW_ARGS, *_key_args(key, now_ms, budget_tz),
                              event_id or "", int(lease_s * 1000), answer, len(ordered)]
        for pc in ordered:
            c = pc.candidate
            est_cost = usd_to_nano(pc.est_cost)
            args += [c.provider, provider_scope(c.provider), model_scope(c.provider, c.model),
                     pc.est_tokens_in, pc.est_tokens_out, est_cost]
            for _kind, limits in pc.limits:
                args += _limit_args(limits)
        args.append(PROBE_TTL_MS)
        out = await self._admit(keys=[SCOPES_KEY], args=args)
        if int(out[0]) == -2:
            return Admission(None, {}, None, given_up=True)
        if int(out[0]) == -1:
            return await self._earlier_admission(ordered, request_id, str(out[1]))
        admitted, probe = int(out[0]), int(out[1]) == 1
        reasons = {int(out[j]) - 1: str(out[j + 1]) for j in range(2, len(out), 2)}
        if not admitted:
            return Admission(None, reasons, None)
        pc = ordered[admitted - 1]
        reservation = Reservation(provider=pc.candidate.provider, model=pc.candidate.model, at_s=now_ms // 1000,
                                  tokens_in=pc.est_tokens_in, tokens_out=pc.est_tokens_out,
                                  cost_nano=usd_to_nano(pc.est_cost), key_id=key.id if key else None)
        return Admission(admitted - 1, reasons, reservation, probe)

    async def give_up(self, questions: list[tuple[str, int]], now_ms: int, mark_s: float) -> int:
        """The edge gave up on these questions, (request id, attempt) each (GIVE_UP_LUA, pipelined: one
        round trip); how many admissions already made for them were released."""
        mark_ms = max(int(mark_s * 1000), 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for request_id, attempt in questions:
                await self._give_up(keys=[], args=[now_ms, f"{ANSWER_PREFIX}{request_id}:{attempt}", request_id,
                                                   mark_ms, *_WINDOW_ARGS], client=pipe)
            out = await pipe.execute()
        return sum(int(x) for x in out)

    async def _earlier_admission(self, ordered: list[PlannedCandidate], request_id: str,
                                 provider: str) -> Admission:
        """The admission an earlier try of this same question made, rebuilt from its lease."""
        lease = await self._redis.hgetall(lease_key(lease_member(request_id, provider)))
        index = next((j for j, pc in enumerate(ordered) if pc.candidate.provider == provider), None)
        if index is None or not lease:  # settled or released meanwhile: nothing is reserved for it any more
            return Admission(None, {j: "answered before; its reservation has ended" for j in range(len(ordered))},
                             None)
        pc = ordered[index]
        key_scope_value = lease.get("key_scope") or ""
        reservation = Reservation(provider=provider, model=pc.candidate.model, at_s=int(lease["at"]),
                                  tokens_in=int(lease["tin"]), tokens_out=int(lease["tout"]),
                                  cost_nano=int(lease["cost"]),
                                  key_id=key_scope_value[2:] if key_scope_value.startswith("k:") else None)
        return Admission(index, {}, reservation, probe=True)  # unknown: its outcome goes at once, to be safe

    async def record_outcomes(self, items: list[tuple[AttemptOutcome, str, int]], breaker: BreakerConfig,
                              now_ms: int, budget_tz: str = "UTC") -> None:
        """Several outcomes (kind, cooldown ms each) in one round trip, in their order: each run of successes
        folded into one ``OUTCOMES_OK_LUA``, any other outcome through ``OUTCOME_LUA``. One script alone
        goes without a pipeline (a pipeline of scripts also asks ``SCRIPT EXISTS`` each time)."""
        calls: list[tuple[AsyncScript, list[object]]] = []
        successes: list[AttemptOutcome] = []
        for outcome, kind, cooldown_ms in items:
            if kind == "ok":
                successes.append(outcome)
                continue
            if successes:
                calls.append((self._outcomes_ok, self._outcomes_ok_args(successes)))
                successes = []
            calls.append((self._outcome, self._outcome_args(outcome, kind, cooldown_ms, breaker, now_ms, budget_tz)))
        if successes:
            calls.append((self._outcomes_ok, self._outcomes_ok_args(successes)))
        if len(calls) == 1:
            script, args = calls[0]
            await script(keys=[], args=args)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for script, args in calls:
                await script(keys=[], args=args, client=pipe)
            await pipe.execute()

    @staticmethod
    def _outcomes_ok_args(successes: list[AttemptOutcome]) -> list[object]:
        by_provider: dict[str, list[AttemptOutcome]] = {}
        for o in successes:
            by_provider.setdefault(o.provider, []).append(o)
        args: list[object] = [LATENCY_ALPHA, len(by_provider)]
        for provider, outcomes in by_provider.items():
            args += [provider, len(outcomes)]
            for o in outcomes:
                args += [o.request_id, o.latency_ms, lease_member(o.request_id, o.provider) if o.reservation else ""]
        return args

    async def record_outcome(self, o: AttemptOutcome, kind: str, cooldown_ms: int, breaker: BreakerConfig,
                             now_ms: int, budget_tz: str = "UTC") -> str:
        return str(await self._outcome(keys=[], args=self._outcome_args(o, kind, cooldown_ms, breaker, now_ms,
                                                                        budget_tz)))

    @staticmethod
    def _outcome_args(o: AttemptOutcome, kind: str, cooldown_ms: int, breaker: BreakerConfig, now_ms: int,
                      budget_tz: str) -> list[object]:
        r = o.reservation
        scopes = [provider_scope(r.provider if r else o.provider),
                  model_scope(r.provider, r.model) if r else model_scope(o.provider, o.model)]
        month = ""
        if r is not None and r.key_id:
            scopes.append(key_scope(r.key_id))
            month = month_key(key_scope(r.key_id), r.at_s, budget_tz)[0]
        return [now_ms, o.provider, o.request_id, kind, cooldown_ms, o.latency_ms,
                breaker.failures, int(breaker.window_s * 1000), int(breaker.open_s * 1000),
                LATENCY_ALPHA, 1 if r else 0, r.at_s if r else 0, r.tokens_in if r else 0,
                r.tokens_out if r else 0, r.cost_nano if r else 0,
                len(scopes), *scopes, month, *_WINDOW_ARGS]

    async def read_stats(self, providers: list[str], now_ms: int) -> tuple[str | None, str | None,
                                                                             dict[str, ProviderStats]]:
        out = await self._stats(keys=[], args=[now_ms, INFLIGHT_STALE_MS, *providers])
        pinned = out[0] or None
        smart = out[1] or None
        stats = {}
        for k, p in enumerate(providers):
            inflight, latency, cooldown, breaker = out[2 + 4 * k: 6 + 4 * k]
            stats[p] = ProviderStats(inflight=int(inflight), latency_ms=float(latency) if latency else None,
                                     cooldown_ms=int(cooldown), breaker=str(breaker))
        return pinned, smart, stats

    @property
    def redis(self):
        return self._redis

    async def set_pin(self, provider: str | None) -> None:
        if provider:
            await self._redis.set(PIN_KEY, provider)
        else:
            await self._redis.delete(PIN_KEY)

    async def set_smart(self, enabled: bool) -> None:
        await self._redis.set(SMART_KEY, "1" if enabled else "0")


# Takes up to ARGV[2] leases expired at ARGV[1] (ms): removes them and returns, per lease, its member and
# its hash as a flat field/value list. One replica takes each (atomic).
REAP_LUA = """
local due = redis.call('ZRANGEBYSCORE', '$LEASES', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(due) do
  redis.call('ZREM', '$LEASES', member)
  local lease = '$LEASE_PREFIX' .. member
  table.insert(out, member)
  table.insert(out, redis.call('HGETALL', lease))
  redis.call('DEL', lease)
end
return out
"""


class Leases:
    """Admission leases (``llmgw_common.leases``): extended while the edge's streams run, taken when they
    expire."""

    def __init__(self, redis):
        self._redis = redis
        self._reap = redis.register_script(redis_keys.lua(REAP_LUA))

    async def extend(self, members: list[str], until_ms: int) -> None:
        if members:
            await self._redis.zadd(LEASES_KEY, {m: until_ms for m in members}, xx=True)

    async def take_expired(self, now_ms: int, limit: int = 200) -> list[tuple[str, dict[str, str]]]:
        out = await self._reap(keys=[], args=[now_ms, limit])
        taken = []
        for j in range(0, len(out), 2):
            flat = out[j + 1]
            taken.append((str(out[j]), {str(flat[k]): str(flat[k + 1]) for k in range(0, len(flat), 2)}))
        return taken

    async def put_back(self, member: str, fields: dict[str, str], due_ms: int) -> None:
        """A lease whose abandoned event could not be published: tried again later."""
        await self._redis.hset(lease_key(member), mapping=fields)
        await self._redis.zadd(LEASES_KEY, {member: due_ms})
